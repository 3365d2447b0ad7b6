"""What each event of the Annotate tab does (the layout and wiring are cap_app.ui.annotate_tab).

Every judgement is written to the store the moment a choice is made (a radio click, a step
number or note left) - there is no save button to forget - and the page says "Saved" only once
the store has committed it, showing the form as stored. Who judges is the request's signed-in
identity (cap_app.annotate.accounts), never a name typed on the page; every handler checks it and its
role before it reads or writes anything, whether the page or an API client calls it.

The handlers are plain module-level functions taking the Store first (bound when wired), then the
components' values, then the request (and the Hugging Face profile on a Space), so tests drive them
without a browser; they call cap_app.annotate.store / item_files / export / accounts and the shared
views, and hold no logic of their own. Item views return tuples in the order of `VIEW`.
"""

from __future__ import annotations

import html
import json
import tempfile
import time
from pathlib import Path

import gradio as gr

from cap_app.annotate import accounts, batch_refinement, export, item_files
from cap_app.annotate.accounts import Identity, Refused
from cap_app.annotate.store import NOT_REFINED, TRIAGE_ORDER, Store, StoreError
from cap_app.engine.align import DraftStep, split_draft
from cap_app.engine.reading import read_result
from cap_app.ui import settings, views
from cap_app.ui.annotate_sessions import OPEN_BATCHES, SESSION_ORDER
from cap_app.ui.charts import label_counts_figure, votes_figure

VIEW = (
    "state",
    "progress",
    "position",
    "question",
    "draft",
    "refinement",
    "verdict",
    "side_by_side",
    "trace",
    "votes",
    "correct",
    "vs_draft",
    "first_wrong_step",
    "note",
    "status",
    "shown",  # the state as the page has it: a judgement names the item it was made on
)
FORM_FIELDS = ("correct", "vs_draft", "first_wrong_step", "note")  # each saved by its own event
JUDGED = ("status", "progress", "stored")  # what a judgement event returns
PAGE_SIZE = 20
WRAPPED = "white-space: pre-wrap; overflow-wrap: anywhere"


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def new_state(batch_id: int | None = None, position: int = 0, refinement: int = 0) -> dict:
    """What one browser session is looking at."""
    return {"batch": batch_id, "position": position, "refinement": refinement}


SHOWN_REFUSED = (
    "Refused: the page named an item this session does not have open; nothing was saved. "
    "Reopen the item (or reload the page) and judge it again."
)


def _shown_state(store: Store, state: dict, shown: str | None) -> dict:
    """The item a judgement is of: the one the page says it showed (`shown`, sent with the click, so a
    key pressed right after it cannot move the judgement to another item), checked against the
    store and this session's own state, which the browser cannot touch. No `shown` ("null", as API
    callers send by default) means the session's state. StoreError when `shown` is anything but an
    item and refinement of a complete batch this session has open."""
    if shown in (None, "", "null"):
        return state
    try:
        value = json.loads(shown)
    except ValueError:
        raise StoreError(SHOWN_REFUSED) from None
    if not isinstance(value, dict) or set(value) != {"batch", "position", "refinement"}:
        raise StoreError(SHOWN_REFUSED)
    batch, position, refinement = value["batch"], value["position"], value["refinement"]
    if type(batch) is not int or batch != state.get("batch"):
        raise StoreError(SHOWN_REFUSED)
    if not all(type(x) is int and x >= 0 for x in (position, refinement)):
        raise StoreError(SHOWN_REFUSED)
    try:
        item = store.item_at(batch, position)  # complete batches only
    except StoreError:
        raise StoreError(SHOWN_REFUSED) from None
    if refinement >= max(len(store.refinements(item.id)), 1):
        raise StoreError(SHOWN_REFUSED)
    return new_state(batch, position, refinement)


def _who(request: gr.Request | None, profile: gr.OAuthProfile | None) -> Identity:
    return accounts.identify(request, profile)


def access_html(request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
    """The line at the top of the tab: who judgements are stored as here, or why nothing is stored."""
    try:
        accounts.identify(request, profile)
        kind = "info"
    except Refused:  # not signed in, not allowed, or nothing can be stored here
        kind = "warning"
    return views.message_html(accounts.describe_access(request, profile), kind)


def progress_html(store: Store, batch_id: int | None, who: Identity | None) -> str:
    if batch_id is None or who is None:
        return views.message_html("Load a batch (or pick one loaded before) to start.")
    judged, total = store.progress(batch_id, who.name)
    percent = 100 * judged / total if total else 0
    return (
        f'<div class="cap-ann-progress"><progress value="{judged}" max="{total}" style="width:100%"></progress>'
        f'<div><span class="cap-ann-judged">{judged}</span> / <span class="cap-ann-total">{total}</span> '
        f"judged by {html.escape(who.name)} ({percent:.0f}%)</div></div>"
    )


def draft_html(steps: list[DraftStep]) -> str:
    """The draft as numbered steps: the numbers "first wrong step" refers to."""
    items = "".join(f'<li value="{s.index + 1}">{html.escape(s.text)}</li>' for s in steps)
    return f'<ol class="cap-ann-draft">{items}</ol>'


def item_view(store: Store, state: dict, who: Identity | None, status: str = "") -> tuple:
    """Every component of the item panel for `state`, as a tuple in the order of VIEW; the form
    shows `who`'s own current judgement, nobody else's."""
    batch_id = state.get("batch")
    if batch_id is None or who is None:
        return _view(state=state, progress=progress_html(store, None, who), status=status)
    item = store.item_at(batch_id, state["position"])
    refinements = store.refinements(item.id)
    index = min(max(state.get("refinement", 0), 0), max(len(refinements) - 1, 0))
    state = new_state(batch_id, item.position, index)
    gold = f'<p class="cap-ann-gold"><b>Gold answer:</b> {html.escape(item.gold)}</p>' if item.gold else ""
    values = dict(
        state=state,
        progress=progress_html(store, batch_id, who),
        position=item.position + 1,
        question=(
            f'<p class="cap-ann-question"><b>Question</b> (item {item.position + 1}, line {item.line}): '
            f"{html.escape(item.question)}</p>{gold}"
        ),
        refinement=gr.update(
            choices=[(_refinement_label(i, r), i) for i, r in enumerate(refinements)],
            value=index if refinements else None,
        ),
        status=status,
    )
    if not refinements:  # nothing read yet: the draft's steps alone
        values["draft"] = draft_html(split_draft(item.draft))
        values["verdict"] = views.message_html("No refinement yet: press Run refinement (r).")
        return _view(**values)
    stored = refinements[index]
    judgement = store.current_judgement(stored.id, who.name)
    reading = read_result(stored.result)
    values.update(
        draft=draft_html(reading.draft_steps),
        verdict=views.verdict_html(reading),
        side_by_side=views.render_side_by_side(reading),
        trace=views.trace_table(stored.result),
        votes=votes_figure(reading),
        correct=judgement.correct if judgement else None,
        vs_draft=judgement.vs_draft if judgement else None,
        first_wrong_step=judgement.first_wrong_step if judgement else None,
        note=judgement.note if judgement else "",
    )
    return _view(**values)


def _view(**values) -> tuple:
    defaults = dict(
        position=None,
        question="",
        draft="",
        refinement=gr.update(choices=[], value=None),
        verdict="",
        side_by_side="",
        trace=[],
        votes=None,
        correct=None,
        vs_draft=None,
        first_wrong_step=None,
        note="",
        status="",
    )
    defaults.update(values)
    defaults["shown"] = json.dumps(defaults["state"])
    return tuple(defaults[name] for name in VIEW)


def _refinement_label(index: int, stored) -> str:
    result = stored.result
    return f"{index + 1}: {result.strategy}, answer {result.program_answer or 'none'} ({stored.source})"


def _error(message: str) -> str:
    return views.message_html(message, "warning")


def _safe_view(store: Store, state: dict, who: Identity | None, status: str = "") -> tuple:
    try:
        return item_view(store, state, who, status)
    except StoreError as error:
        return item_view(store, new_state(), who, _error(str(error)))


def _refused_view(state: dict, refused: Exception) -> tuple:
    """A refused call: nothing of the batch is shown, the session keeps its place, the page says why."""
    return _view(state=state, progress="", status=_error(str(refused)))


def batch_choices(store: Store) -> list[tuple[str, int]]:
    return [
        (f"{b.name} ({item_files.items_text(b.item_count)}, {b.created_at[:16].replace('T', ' ')})", b.id)
        for b in store.list_batches()
    ]


def refresh_batches(store: Store, state: dict, request: gr.Request, profile: gr.OAuthProfile | None = None):
    """The batch list, for signed-in annotators only."""
    try:
        _who(request, profile)
    except Refused:
        return gr.update(choices=[], value=None)
    return gr.update(choices=batch_choices(store), value=state.get("batch"))


NO_BATCH = "No batch is open: pick one in Batch above, or load a file."


def remember(store: Store, state: dict, request: gr.Request, profile: gr.OAuthProfile | None = None) -> None:
    """The session's state changed: keep the batch and item it has open for the account (OPEN_BATCHES)."""
    try:
        who = _who(request, profile)
    except Refused:
        return
    if isinstance(state, dict):
        OPEN_BATCHES.set(store, who.name, state)


def reopen(store: Store, state: dict, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
    """The page's load: the batch list, and the batch and item the account had open before a reload
    (OPEN_BATCHES). Returns the batch dropdown and the view; the view is left as it is when nothing is
    reopened (a batch since deleted, or none open)."""
    skip = tuple(gr.skip() for _ in VIEW)
    try:
        who = _who(request, profile)
    except Refused:
        return gr.update(choices=[], value=None), *skip
    choices = batch_choices(store)
    remembered = OPEN_BATCHES.get(store, who.name) or {}
    try:
        batch = store.batch(remembered["batch"])
    except (KeyError, StoreError):
        return gr.update(choices=choices, value=None), *skip
    position = remembered.get("position", 0)
    if not 0 <= position < batch.item_count:
        position = _first_unjudged(store, batch.id, who)
    message = views.message_html(f"Reopened {batch.name}, where you were before the page was reloaded.")
    return gr.update(choices=choices, value=batch.id), *_safe_view(store, new_state(batch.id, position), who, message)


def load_file(
    store: Store,
    state: dict,
    upload: str | None,
    path: str,
    draft_key: str,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
    order: str | None = None,
) -> tuple:
    """Load button: an uploaded file (any annotator) or a path on the server (admins only, within the
    allowed folders) becomes a batch, opened at the first unjudged item in `order` (the page's
    choice; none: item order); the report says which of the two was loaded. Both at once is
    refused (on the page, choosing a file clears the path and typing a path clears the upload)."""
    try:
        who = _who(request, profile)
        if upload and (path or "").strip():
            raise item_files.BatchError(
                "Both a file in Upload and a path are given, so nothing was loaded: clear one of them."
            )
        if upload:
            source, name, origin = Path(upload), Path(upload).name, "the uploaded file"
        elif (path or "").strip():
            accounts.require_admin(who, "load files on the server by path (upload the file instead)")
            source = item_files.allowed_batch_path(path.strip())
            name, origin = source.name, "the path on the server"
        else:
            raise item_files.BatchError("Choose a file to upload or enter a path.")
        report = item_files.load_batch(store, source, draft_key=draft_key, name=name)
        opened = new_state(report.batch.id, _first_unjudged(store, report.batch.id, who, order))
    except (item_files.BatchError, StoreError, Refused) as error:
        return (gr.skip(), _error(str(error)), *(gr.skip() for _ in VIEW))
    return (
        gr.update(choices=batch_choices(store), value=report.batch.id),
        f"Loaded {origin}. {report.summary()}",
        *_safe_view(store, opened, who),
    )


def cleared_path() -> str:
    """A file chosen clears the path: Load reads what was touched last."""
    return ""


def cleared_upload(path: str):
    """A path typed clears the upload; the path emptied (as choosing a file does) leaves it."""
    return None if (path or "").strip() else gr.skip()


def _first_unjudged(store: Store, batch_id: int, who: Identity, order: str | None = None) -> int:
    """Where a batch opens: the caller's first unjudged item, in `order` when the page names one (in
    triage order, the item most in need of a person), else in item order."""
    position = store.next_unjudged(batch_id, who.name, -1, _order(order or "position"))
    return 0 if position is None else position


# The item order choices, as the page shows them: (label, ITEM_ORDERS value).
ORDER_CHOICES = [("triage order", "triage"), ("item order", "position")]
# The verdict filter of the item list: (label, store.VERDICT_FILTERS value).
VERDICT_CHOICES = [
    ("all items", "all"),
    *((verdict.replace("_", " "), verdict) for verdict in TRIAGE_ORDER),
    ("not refined yet", NOT_REFINED),
]


def _order(order: str | None) -> str:
    """An order sent by the page or an API client: one of ITEM_ORDERS, else StoreError."""
    if order not in {value for _, value in ORDER_CHOICES}:
        raise StoreError(f"Unknown order {str(order)[:40]!r}; choose triage or position.")
    return order


def open_batch(
    store: Store,
    state: dict,
    batch_id: int | None,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
    order: str | None = None,
) -> tuple:
    """The Batch dropdown: open a batch at its first unjudged item (in `order`, as load_file). The
    browser also sends the dropdown's value when it merely loses focus: then the page is left exactly
    as it is (a view sent now could arrive after a judgement's reply and show an older form)."""
    if batch_id is not None and batch_id == state.get("batch"):
        return tuple(gr.skip() for _ in VIEW)
    try:
        who = _who(request, profile)
    except Refused as refused:
        return _refused_view(state, refused)
    if batch_id is None:
        return _safe_view(store, new_state(), who)
    if type(batch_id) is not int:
        return _safe_view(store, state, who, _error(f"No batch {batch_id}."))
    try:
        position = _first_unjudged(store, store.batch(batch_id).id, who, order)
    except StoreError as error:
        return _safe_view(store, state, who, _error(str(error)))
    return _safe_view(store, new_state(batch_id, position), who)


def _caller_in_a_batch(
    store: Store, state: dict, request: gr.Request | None, profile: gr.OAuthProfile | None
) -> tuple[Identity | None, tuple | None]:
    """The signed-in caller of a handler that acts in the open batch, and the view to return at
    once when they may not act or no batch is open (None when they may go on)."""
    try:
        who = _who(request, profile)
    except Refused as refused:
        return None, _refused_view(state, refused)
    if state.get("batch") is None:
        return who, _safe_view(store, state, who, _error(NO_BATCH))
    return who, None


def go_to(
    store: Store, state: dict, number: float | None, request: gr.Request, profile: gr.OAuthProfile | None = None
) -> tuple:
    """The item-number box: jump to item `number` (1-based)."""
    who, refused = _caller_in_a_batch(store, state, request, profile)
    if refused is not None:
        return refused
    try:
        total = store.batch(state["batch"]).item_count
        wanted = _whole_number(number, "item number")
        position = min(max(1 if wanted is None else int(wanted), 1), total) - 1
    except (StoreError, ValueError, OverflowError) as error:
        return _safe_view(store, state, who, _error(str(error)))
    return _safe_view(store, new_state(state["batch"], position), who)


def _whole_number(value, what: str) -> int | float | None:
    """A number typed in a text field (or sent as a number by an API client): None when empty; a
    whole number as an int; any other number as it is, for the caller to refuse in its own words."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        raise StoreError(f"The {what} must be a number, not {text[:20]!r}.") from None
    return int(number) if number.is_integer() else number


def step(store: Store, state: dict, request: gr.Request, profile: gr.OAuthProfile | None = None, *, delta: int):
    who, refused = _caller_in_a_batch(store, state, request, profile)
    if refused is not None:
        return refused
    try:
        total = store.batch(state["batch"]).item_count
    except StoreError as error:
        return _safe_view(store, new_state(), who, _error(str(error)))
    return _safe_view(store, new_state(state["batch"], (state["position"] + delta) % total), who)


def next_unjudged(
    store: Store,
    state: dict,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
    order: str = "triage",
) -> tuple:
    """The caller's next unjudged item after this one in `order` (triage: engine.triage's order, which
    is item order while no item has a refinement), wrapping round."""
    who, refused = _caller_in_a_batch(store, state, request, profile)
    if refused is not None:
        return refused
    try:
        position = store.next_unjudged(state["batch"], who.name, state["position"], _order(order))
    except StoreError as error:
        return _safe_view(store, state, who, _error(str(error)))
    if position is None:
        return _safe_view(store, state, who, views.message_html("Every item of this batch is judged."))
    return _safe_view(store, new_state(state["batch"], position), who)


def choose_refinement(
    store: Store, state: dict, index: int | None, request: gr.Request, profile: gr.OAuthProfile | None = None
) -> tuple:
    try:
        who = _who(request, profile)
    except Refused as refused:
        return _refused_view(state, refused)
    index = index if type(index) is int and index >= 0 else 0
    return _safe_view(store, {**state, "refinement": index}, who)


def _form_text(judgement) -> str:
    """The stored form in words, as the status line shows it after each save."""
    if judgement is None:
        return "nothing"
    parts = [
        f"correct: {judgement.correct or '-'}",
        f"vs draft: {judgement.vs_draft or '-'}",
        f"first wrong step: {judgement.first_wrong_step or '-'}",
    ]
    if judgement.note:
        parts.append("note saved")
    return ", ".join(parts)


def _reply(status: str, progress: str, shown_state: dict, judgement) -> tuple:
    """What a judgement returns, in the order of JUDGED: the status and progress, and the same with the
    stored form for the page (SHOW_STORED_JS), tagged with the item it is of and a stamp in the
    store's order, so that the page shows the newest whatever order replies arrive in."""
    stored = {
        "shown": json.dumps(shown_state),
        "correct": judgement.correct if judgement else None,
        "vs_draft": judgement.vs_draft if judgement else None,
        "status": status,
        "progress": progress,
        "stamp": time.time_ns(),  # survives a restart of the server, unlike a monotonic clock
    }
    return status, progress, json.dumps(stored)


def record_judgement(
    store: Store,
    state: dict,
    value,
    shown: str,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
    number: str | None = None,
    *,
    field: str,
) -> tuple:
    """One change of the judgement form (`field` set to `value`): stored at once with the fields not
    changed kept as stored, so clicks on two fields in quick succession are both kept, in order.
    Returns (status, progress, stored form) in the order of JUDGED; "Saved" only once the store has
    committed it, and the radios then show the stored form. `number` orders a page session's calls
    (SessionOrder; Gradio passes the request and profile before it). When refused, nothing is stored and the
    radios go back to what is stored (if anything); typed fields keep what was typed, so nothing typed
    is lost. The judgement is of the item the page showed (`shown`, sent with the click, checked)."""
    if field not in FORM_FIELDS:
        raise ValueError(f"unknown form field {field!r}")
    with SESSION_ORDER.turn(_session(request), number):
        return _record(store, state, value, shown, request, profile, field)


def _record(store: Store, state: dict, value, shown: str, request, profile, field: str) -> tuple:
    try:
        who = _who(request, profile)
    except Refused as refused:
        return _reply(_error(str(refused)), "", new_state(), None)
    judged_state = state
    try:
        judged_state = _shown_state(store, state, shown)
        if judged_state.get("batch") is None:
            raise StoreError("Load a batch first.")
        item = store.item_at(judged_state["batch"], judged_state["position"])
        refinements = store.refinements(item.id)
        if not refinements:
            raise StoreError("There is no refinement to judge yet: run one first.")
        refinement = refinements[min(judged_state.get("refinement", 0), len(refinements) - 1)]
        if field == "first_wrong_step":
            value = _whole_number(value, "first wrong step")  # None, an int or a float from here
            steps = len(read_result(refinement.result).draft_steps)  # as the page numbers them
            if value is not None and value > steps:
                raise StoreError(f"The draft has {steps} steps; the first wrong step cannot be {value:g}.")
        judgement = store.judge(refinement.id, who.name, origin=who.origin, **{field: value})
    except StoreError as error:
        current = _current_of(store, judged_state, who)
        return _reply(_error(str(error)), progress_html(store, state.get("batch"), who), judged_state, current)
    progress = progress_html(store, state["batch"], who)
    if judgement is None:  # an empty form left untouched: nothing to save
        return _reply("", progress, judged_state, None)
    saved = (
        f"Saved: item {item.position + 1}, refinement {refinements.index(refinement) + 1} as {who.name}: "
        f"{_form_text(judgement)} ({judgement.created_at[11:19]} UTC)."
    )
    return _reply(views.message_html(saved), progress, judged_state, judgement)


def _current_of(store: Store, state: dict, who: Identity):
    """`who`'s stored judgement of the refinement `state` names, if it names one."""
    try:
        item = store.item_at(state["batch"], state["position"])
        refinements = store.refinements(item.id)
        return store.current_judgement(refinements[min(state.get("refinement", 0), len(refinements) - 1)].id, who.name)
    except (StoreError, KeyError, TypeError, IndexError):
        return None


def undo(
    store: Store,
    state: dict,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
    number: str | None = None,
) -> tuple:
    """Undo: withdraw the caller's own newest change and show the item it was about. Each click or
    typed field saves a snapshot of the form, so undo steps back one of those, not a whole judgement.
    In key order with the session's judgements (`number`, see SessionOrder)."""
    with SESSION_ORDER.turn(_session(request), number):
        return _undo(store, state, request, profile)


def _undo(store: Store, state: dict, request, profile) -> tuple:
    try:
        who = _who(request, profile)
    except Refused as refused:
        return _refused_view(state, refused)
    try:
        undone = store.undo_last(who.name)
    except StoreError as error:
        return _safe_view(store, state, who, _error(str(error)))
    if undone is None:
        return _safe_view(store, state, who, views.message_html("Nothing to undo."))
    refinement = store.refinement(undone.refinement_id)
    item = store.item(refinement.item_id)
    index = [r.id for r in store.refinements(item.id)].index(refinement.id)
    message = f"Undid your change to item {item.position + 1} made at {undone.created_at[11:19]} UTC."
    return _safe_view(store, new_state(item.batch_id, item.position, index), who, views.message_html(message))


def _runner_settings(model_choice: str, strategy: str, max_new_tokens: float) -> batch_refinement.JobSettings:
    """The runner's choices (model, strategy, token limit), which Run and Refine all share, as the
    engine's configs within what the server grants a visitor (ValueError otherwise)."""
    return batch_refinement.JobSettings(
        refine=settings.refine_config(
            **dict(settings.default_settings(), strategy=strategy, max_new_tokens=max_new_tokens)
        ),
        model=settings.model_config(model_choice),
        backend=settings.backend_config("auto"),
    )


def run_refinement(
    store: Store,
    state: dict,
    model_choice: str,
    strategy: str,
    max_new_tokens: float,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
) -> tuple:
    """Run (or re-run) the engine on the current item; the result is kept as one more refinement."""
    from cap_app.backends import BackendError, get_backend, priority
    from cap_app.engine.inputs import InputError
    from cap_app.engine.refine import refine
    from cap_app.models.loading import ModelLoadError

    try:
        who = _who(request, profile)
    except Refused as refused:
        return _refused_view(state, refused)
    if state.get("batch") is None:
        return _safe_view(store, state, who, _error("Load a batch first."))
    try:
        item = store.item_at(state["batch"], state["position"])
        chosen = _runner_settings(model_choice, strategy, max_new_tokens)
        with priority.interactive():  # a batch refinement starts no new item while an annotator waits
            backend = get_backend(chosen.model, chosen.backend)
            result = refine(item.question, item.draft, gold=item.gold, config=chosen.refine, backend=backend)
        store.add_refinement(item.id, result, "run")
    except (InputError, ModelLoadError, BackendError, ValueError) as error:
        return _safe_view(store, state, who, _error(f"The refinement could not run: {error}"))
    index = len(store.refinements(item.id)) - 1
    return _safe_view(
        store,
        new_state(state["batch"], item.position, index),
        who,
        views.message_html("Refinement added: judge it below."),
    )


def show_arrived_refinement(
    store: Store,
    state: dict,
    shown: str | None,
    shown_refinement,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
) -> tuple:
    """Timer: an item the page shows without a refinement (`shown_refinement` is None) is shown again
    once one is stored (by Refine all, or another annotator's Run), so whoever waits on it need not
    leave and come back. Anything else leaves the page as it is: a form being filled is never redrawn,
    nor an item the page has moved away from since the tick was sent (`shown` is not the state)."""
    unchanged = tuple(gr.skip() for _ in VIEW)
    if shown_refinement is not None or state.get("batch") is None or shown != json.dumps(state):
        return unchanged
    try:
        who = _who(request, profile)
        if not store.refinements(store.item_at(state["batch"], state["position"]).id):
            return unchanged
    except (Refused, StoreError):
        return unchanged
    return _safe_view(store, state, who, views.message_html("A refinement arrived: judge it below."))


def items_page(
    store: Store,
    state: dict,
    page: float | None,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
    order: str = "position",
    verdict: str = "all",
) -> list[list]:
    """One page of the batch's items for the overview table in `order`, only those with `verdict`
    (VERDICT_CHOICES): the caller's own progress and each item's newest verdict with the program's
    answer beside the draft's. Empty when refused or the order or filter is unknown."""
    try:
        who = _who(request, profile)
    except Refused:
        return []
    if state.get("batch") is None:
        return []
    try:
        rows = store.items_page(
            state["batch"], who.name, (_page(page) - 1) * PAGE_SIZE, PAGE_SIZE, order=_order(order), verdict=verdict
        )
    except StoreError:
        return []
    return [
        [
            row.item.position + 1,
            _shorten(row.item.question),
            row.refinements,
            "yes" if row.judged else "",
            (row.verdict or "").replace("_", " "),
            _shorten(row.program_answer or "", 40),
            _shorten(row.draft_answer or "", 40),
        ]
        for row in rows
    ]


def _page(page: float | None) -> int:
    try:
        return max(int(page or 1), 1)
    except (TypeError, ValueError, OverflowError):
        return 1


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def open_from_table(
    store: Store,
    state: dict,
    page: float | None,
    evt: gr.SelectData,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
    order: str = "position",
    verdict: str = "all",
) -> tuple:
    """A click on a row of the items table opens that item: the row is found again in the same page,
    order and filter (the browser's copy of the table is not trusted)."""
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    number = 1
    try:
        offset = (_page(page) - 1) * PAGE_SIZE + max(int(row), 0)
        if state.get("batch") is not None:
            found = store.items_page(state["batch"], None, offset, 1, order=_order(order), verdict=verdict)
            number = found[0].item.position + 1 if found else 1
    except (TypeError, ValueError, OverflowError, StoreError):
        number = 1
    return go_to(store, state, number, request, profile)


def export_download(store: Store, request: gr.Request, profile: gr.OAuthProfile | None = None, *, fmt: str):
    """Export buttons (admins only: an export holds everyone's judgements and notes): the file to
    download (none when empty), the summary with agreement and, for an empty export, why it is
    empty; the label chart."""
    try:
        accounts.require_admin(_who(request, profile), "export judgements or see everyone's agreement")
    except Refused as refused:
        return None, _error(str(refused)), None
    folder = Path(tempfile.mkdtemp(prefix="cap-export-"))
    summary = export.export(store, fmt, folder / f"cap-{fmt}.{export.FORMATS[fmt].suffix}")
    return (
        summary.output if summary.rows_written else None,
        # pre-wrap: the reason an export is empty is one long line, wrapped to the box like the rest
        f'<pre class="cap-ann-export-text" style="{WRAPPED}">{html.escape(summary.text(full_path=False))}</pre>',
        label_counts_figure(summary) if summary.annotators else None,  # no judgement: no empty axes
    )


def delete_batch(
    store: Store, state: dict, confirm: str, request: gr.Request, profile: gr.OAuthProfile | None = None
) -> tuple:
    """Admins only: delete the open batch with every judgement of it, once its name is typed to confirm."""
    try:
        who = _who(request, profile)
        accounts.require_admin(who, "delete batches")
        if state.get("batch") is None:
            raise StoreError("Open the batch to delete first.")
        batch = store.batch(state["batch"])
        if (confirm or "").strip() != batch.name:
            raise StoreError(f"Type the batch's name ({batch.name}) to confirm; nothing was deleted.")
        store.delete_batch(batch.id)
    except (Refused, StoreError) as error:
        return gr.skip(), *_refused_view(state, error)
    message = views.message_html(f"Deleted batch {batch.name} and every judgement of it.")
    return gr.update(choices=batch_choices(store), value=None), *item_view(store, new_state(), who, message)


# -- Refine all (cap_app.annotate.batch_refinement runs it; these start, stop and show it) ----------

REFINE_ALL = ("refine_all_line", "refine_all_timer")  # what each Refine all event returns, in this order
# How often a page with a batch open reads its Refine all progress (and the items table): often while
# the job runs; slowly otherwise, so that a page opened before someone started the job learns of it.
REFRESH_RUNNING_S = 2.0
REFRESH_IDLE_S = 10.0


def _refine_all_reply(store: Store, batch_id: int | None, message: str = "") -> tuple:
    """The progress line (and `message` after it, e.g. why a click was refused) and the timer that
    refreshes it while the batch is open: every REFRESH_RUNNING_S while its job runs, so every page
    that has the batch open follows it, else every REFRESH_IDLE_S."""
    if batch_id is None:
        return views.message_html(message or "Open a batch to refine all of it.", "warning" if message else "info"), (
            gr.Timer(active=False)
        )
    progress = batch_refinement.progress(store, batch_id)
    line = f'<div class="cap-ann-refine-all-text">{html.escape(batch_refinement.describe(progress))}</div>'
    every = REFRESH_RUNNING_S if progress.state == "running" else REFRESH_IDLE_S
    return line + (_error(message) if message else ""), gr.Timer(every, active=True)


def refine_all_status(store: Store, state: dict, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
    """The open batch's Refine all progress, for anyone signed in (in the order of REFINE_ALL)."""
    try:
        _who(request, profile)
    except Refused:
        return "", gr.Timer(active=False)
    try:
        return _refine_all_reply(store, state.get("batch"))
    except StoreError as error:
        return _error(str(error)), gr.Timer(active=False)


def refine_all(
    store: Store,
    state: dict,
    model_choice: str,
    strategy: str,
    max_new_tokens: float,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
) -> tuple:
    """Refine all: refine every item of the open batch that has no refinement, in the background on the
    server, with the page's model, strategy and token limit (a stopped job goes on with these). Admins
    only (batch_refinement says why); anyone else is told so, and nothing starts."""

    def start(who: Identity, batch_id: int) -> None:
        batch_refinement.start(store, batch_id, who, _runner_settings(model_choice, strategy, max_new_tokens))

    return _as_admin_on_open_batch(store, state, request, profile, start)


def stop_refine_all(store: Store, state: dict, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
    """Stop: end the open batch's Refine all (admins only); every item refined so far stays."""

    def stop(who: Identity, batch_id: int) -> None:
        batch_refinement.stop(store, batch_id, who)

    return _as_admin_on_open_batch(store, state, request, profile, stop)


def _as_admin_on_open_batch(store: Store, state: dict, request, profile, act) -> tuple:
    """Run `act(who, batch_id)` for a signed-in admin with a batch open; then the progress line, with
    why it was refused or failed (a setting out of range, a job already running) after it."""
    batch_id = state.get("batch")
    try:
        who = _who(request, profile)
    except Refused as refused:
        return _error(str(refused)), gr.Timer(active=False)
    try:
        accounts.require_admin(who, batch_refinement.ADMIN_ACTION)
        if batch_id is None:
            raise StoreError(NO_BATCH)
        act(who, batch_id)
    except (Refused, StoreError, ValueError) as error:
        return _refine_all_reply(store, batch_id, str(error))
    return _refine_all_reply(store, batch_id)
