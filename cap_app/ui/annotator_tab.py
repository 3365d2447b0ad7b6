"""The Annotate tab: load a batch, inspect each refinement, judge it, export training data.

Every judgement is written to the store the moment a choice is made (a radio click, a step
number or note left) - there is no save button to forget. The handlers are plain module-level
functions taking the Store first (bound with functools.partial when wired), so tests drive
them without a browser; they call cap_app.store / item_files / export and the shared views, and
hold no logic of their own. Item views return tuples in the order of `VIEW`.
"""

from __future__ import annotations

import functools
import html
import json
import tempfile
from pathlib import Path

import gradio as gr

from cap_app import export, item_files
from cap_app.align import split_draft
from cap_app.charts import label_counts_figure, votes_figure
from cap_app.refine import STRATEGIES
from cap_app.store import CORRECT_CHOICES, VS_DRAFT_CHOICES, Store, StoreError, check_annotator
from cap_app.ui import handlers, views
from cap_app.ui.hosting import CONCURRENCY_LIMIT, model_choices
from cap_app.ui.views import TRACE_HEADERS

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
RADIOS = ("correct", "vs_draft")  # the judgement form's radio buttons (names in VIEW)
PAGE_SIZE = 20
EXPORT_BUTTONS = (("dpo", "DPO pairs (JSONL)"), ("kto", "KTO rows (JSONL)"), ("csv", "All judgements (CSV)"))
PAGE_HEADERS = ["#", "question", "refinements", "judged by you"]
SHORTCUTS = (
    ("y / n / u", "refinement correct: yes / no / unsure"),
    ("b / s / w", "vs draft: better / same / worse"),
    ("j / k", "next / previous item"),
    ("g", "next unjudged"),
    ("z", "undo your last change"),
    ("r", "run a refinement"),
)
# Keys click the matching control; ignored while typing in a field or when this tab is hidden.
SHORTCUTS_JS = """
if (!window.capAnnotatorKeys) {
  window.capAnnotatorKeys = true;
  const keys = {
    y: '#cap-ann-correct input[value="yes"]', n: '#cap-ann-correct input[value="no"]',
    u: '#cap-ann-correct input[value="unsure"]', b: '#cap-ann-vs input[value="better"]',
    s: '#cap-ann-vs input[value="same"]', w: '#cap-ann-vs input[value="worse"]',
    j: '#cap-ann-next', k: '#cap-ann-prev', g: '#cap-ann-unjudged', z: '#cap-ann-undo', r: '#cap-ann-run',
  };
  document.addEventListener('keydown', (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    const typing = target && (target.isContentEditable || target.tagName === 'TEXTAREA' || target.tagName === 'SELECT'
      || (target.tagName === 'INPUT' && target.type !== 'radio'));
    const tab = document.getElementById('cap-annotator');
    if (typing || !tab || tab.offsetParent === null || !(event.key in keys)) return;
    const control = document.querySelector(keys[event.key]);
    if (control) { event.preventDefault(); control.click(); }
  });
}
"""


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


def _name(annotator: str | None) -> str:
    return " ".join((annotator or "").split())


def progress_html(store: Store, batch_id: int | None, annotator: str) -> str:
    if batch_id is None:
        return views.message_html("Load a batch (or pick one loaded before) to start.")
    judged, total = store.progress(batch_id, _name(annotator))
    percent = 100 * judged / total if total else 0
    who = f" by {html.escape(_name(annotator))}" if _name(annotator) else " (enter your name to track yours)"
    return (
        f'<div class="cap-ann-progress"><progress value="{judged}" max="{total}" style="width:100%"></progress>'
        f'<div><span class="cap-ann-judged">{judged}</span> / <span class="cap-ann-total">{total}</span> '
        f"judged{who} ({percent:.0f}%)</div></div>"
    )


def draft_html(draft: str) -> str:
    """The draft as numbered steps: the numbers "first wrong step" refers to."""
    steps = "".join(f'<li value="{s.index + 1}">{html.escape(s.text)}</li>' for s in split_draft(draft))
    return f'<ol class="cap-ann-draft">{steps}</ol>'


def item_view(store: Store, state: dict, annotator: str, status: str = "") -> tuple:
    """Every component of the item panel for `state`, as a tuple in the order of VIEW."""
    batch_id = state.get("batch")
    if batch_id is None:
        return _view(state=state, progress=progress_html(store, None, annotator), status=status)
    item = store.item_at(batch_id, state["position"])
    refinements = store.refinements(item.id)
    index = min(max(state.get("refinement", 0), 0), max(len(refinements) - 1, 0))
    state = new_state(batch_id, item.position, index)
    gold = f'<p class="cap-ann-gold"><b>Gold answer:</b> {html.escape(item.gold)}</p>' if item.gold else ""
    values = dict(
        state=state,
        progress=progress_html(store, batch_id, annotator),
        position=item.position + 1,
        question=(
            f'<p class="cap-ann-question"><b>Question</b> (item {item.position + 1}, line {item.line}): '
            f"{html.escape(item.question)}</p>{gold}"
        ),
        draft=draft_html(item.draft),
        refinement=gr.update(
            choices=[(_refinement_label(i, r), i) for i, r in enumerate(refinements)],
            value=index if refinements else None,
        ),
        status=status,
    )
    if not refinements:
        values["verdict"] = views.message_html("No refinement yet: press Run refinement (r).")
        return _view(**values)
    stored = refinements[index]
    judgement = store.current_judgement(stored.id, annotator) if _name(annotator) else None
    values.update(
        verdict=views.verdict_html(stored.result),
        side_by_side=views.render_side_by_side(stored.result),
        trace=views.trace_table(stored.result),
        votes=votes_figure(stored.result),
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


def _safe_view(store: Store, state: dict, annotator: str, status: str = "") -> tuple:
    try:
        return item_view(store, state, annotator, status)
    except StoreError as error:
        return item_view(store, new_state(), annotator, _error(str(error)))


def batch_choices(store: Store) -> list[tuple[str, int]]:
    return [
        (f"{b.name} ({item_files.items_text(b.item_count)}, {b.created_at[:16].replace('T', ' ')})", b.id)
        for b in store.list_batches()
    ]


def refresh_batches(store: Store, state: dict):
    return gr.update(choices=batch_choices(store), value=state.get("batch"))


def load_file(store: Store, upload: str | None, path: str, draft_key: str, annotator: str) -> tuple:
    """Load button: a file upload or a server path (within the allowed folders) becomes a batch. A name
    the store cannot take is refused before loading: the batch would load, then fail to show."""
    try:
        check_annotator(annotator)
        if upload:
            source, name = Path(upload), Path(upload).name
        elif (path or "").strip():
            source = item_files.allowed_batch_path(path.strip())
            name = source.name
        else:
            raise item_files.BatchError("Choose a file to upload or enter a path.")
        report = item_files.load_batch(store, source, draft_key=draft_key, name=name)
    except (item_files.BatchError, StoreError) as error:
        return (gr.update(), _error(str(error)), *(gr.skip() for _ in VIEW))
    state = new_state(report.batch.id, _first_unjudged(store, report.batch.id, annotator))
    return (
        gr.update(choices=batch_choices(store), value=report.batch.id),
        report.summary(),
        *_safe_view(store, state, annotator),
    )


def _first_unjudged(store: Store, batch_id: int, annotator: str) -> int:
    position = store.next_unjudged(batch_id, _name(annotator), -1)
    return 0 if position is None else position


def open_batch(store: Store, state: dict, batch_id: int | None, annotator: str) -> tuple:
    """The Batch dropdown: open a batch at its first unjudged item. The browser also sends the
    dropdown's value when it merely loses focus, so the batch already open stays where it is."""
    if batch_id is not None and batch_id == state.get("batch"):
        return _safe_view(store, state, annotator)
    if batch_id is None:
        return _safe_view(store, new_state(), annotator)
    return _safe_view(store, new_state(batch_id, _first_unjudged(store, batch_id, annotator)), annotator)


def go_to(store: Store, state: dict, annotator: str, number: float | None) -> tuple:
    """The item-number box: jump to item `number` (1-based)."""
    if state.get("batch") is None:
        return _safe_view(store, state, annotator)
    total = store.batch(state["batch"]).item_count
    position = min(max(int(number or 1), 1), total) - 1
    return _safe_view(store, new_state(state["batch"], position), annotator)


def step(store: Store, state: dict, annotator: str, delta: int) -> tuple:
    if state.get("batch") is None:
        return _safe_view(store, state, annotator)
    total = store.batch(state["batch"]).item_count
    return _safe_view(store, new_state(state["batch"], (state["position"] + delta) % total), annotator)


def next_unjudged(store: Store, state: dict, annotator: str) -> tuple:
    if state.get("batch") is None:
        return _safe_view(store, state, annotator)
    if not _name(annotator):
        return _safe_view(store, state, annotator, _error("Enter your annotator name first."))
    position = store.next_unjudged(state["batch"], _name(annotator), state["position"])
    if position is None:
        return _safe_view(store, state, annotator, views.message_html("Every item of this batch is judged."))
    return _safe_view(store, new_state(state["batch"], position), annotator)


def choose_refinement(store: Store, state: dict, annotator: str, index: int | None) -> tuple:
    return _safe_view(store, {**state, "refinement": index or 0}, annotator)


def record_judgement(
    store: Store,
    state: dict,
    annotator: str,
    correct: str | None,
    vs_draft: str | None,
    first_wrong_step: float | None,
    note: str,
    shown: str = "",
) -> tuple:
    """Any change of the judgement form: save the whole form now. Returns (status, progress, *RADIOS).
    When refused, the choices go back to what is saved (if anything), so a refused click does not
    look made; typed fields keep what was typed, so nothing typed is lost. The judgement is of the
    item the page showed (`shown`, sent with the click), not of the session's state now: a key
    pressed right after it ("w" then "j") may move the state first, as events run at once."""
    try:
        state = _shown_state(store, state, shown)
        if state.get("batch") is None:
            raise StoreError("Load a batch first.")
        item = store.item_at(state["batch"], state["position"])
        refinements = store.refinements(item.id)
        if not refinements:
            raise StoreError("There is no refinement to judge yet: run one first.")
        steps = len(split_draft(item.draft))
        if first_wrong_step is not None and first_wrong_step > steps:
            raise StoreError(f"The draft has {steps} steps; the first wrong step cannot be {first_wrong_step:g}.")
        refinement = refinements[min(state.get("refinement", 0), len(refinements) - 1)]
        judgement = store.judge(
            refinement.id, annotator, correct=correct, vs_draft=vs_draft, first_wrong_step=first_wrong_step, note=note
        )
    except StoreError as error:
        shown = dict(zip(VIEW, _safe_view(store, state, annotator), strict=True))
        return (
            _error(str(error)),
            progress_html(store, state.get("batch"), annotator),
            *(shown[name] for name in RADIOS),
        )
    kept = tuple(gr.skip() for _ in RADIOS)
    if judgement is None:  # an empty form left untouched: nothing to save
        return "", progress_html(store, state["batch"], annotator), *kept
    saved = (
        f"Saved: item {item.position + 1}, refinement {refinements.index(refinement) + 1} "
        f"({judgement.created_at[11:19]} UTC)."
    )
    return views.message_html(saved), progress_html(store, state["batch"], annotator), *kept


def undo(store: Store, state: dict, annotator: str) -> tuple:
    """Undo: withdraw this annotator's newest change and show the item it was about. Each click or
    typed field saves a snapshot of the form, so undo steps back one of those, not a whole judgement."""
    try:
        undone = store.undo_last(annotator)
    except StoreError as error:
        return _safe_view(store, state, annotator, _error(str(error)))
    if undone is None:
        return _safe_view(store, state, annotator, views.message_html("Nothing to undo."))
    refinement = store.refinement(undone.refinement_id)
    item = store.item(refinement.item_id)
    index = [r.id for r in store.refinements(item.id)].index(refinement.id)
    message = f"Undid your change to item {item.position + 1} made at {undone.created_at[11:19]} UTC."
    return _safe_view(store, new_state(item.batch_id, item.position, index), annotator, views.message_html(message))


def run_refinement(
    store: Store, state: dict, annotator: str, model_choice: str, strategy: str, max_new_tokens: float
) -> tuple:
    """Run (or re-run) the engine on the current item; the result is kept as one more refinement."""
    from cap_app.backends import BackendError, get_backend
    from cap_app.model import ModelLoadError
    from cap_app.refine import InputError, refine

    if state.get("batch") is None:
        return _safe_view(store, state, annotator, _error("Load a batch first."))
    item = store.item_at(state["batch"], state["position"])
    try:
        config = handlers.refine_config(
            **dict(handlers.default_settings(), strategy=strategy, max_new_tokens=max_new_tokens)
        )
        model = get_backend(handlers.model_config(model_choice), handlers.backend_config("auto"))
        result = refine(item.question, item.draft, gold=item.gold, config=config, model=model)
    except (InputError, ModelLoadError, BackendError, ValueError) as error:
        return _safe_view(store, state, annotator, _error(f"The refinement could not run: {error}"))
    store.add_refinement(item.id, result, "run")
    index = len(store.refinements(item.id)) - 1
    return _safe_view(
        store,
        new_state(state["batch"], item.position, index),
        annotator,
        views.message_html("Refinement added: judge it below."),
    )


def items_page(store: Store, state: dict, annotator: str, page: float | None) -> list[list]:
    """One page of the batch's items for the overview table."""
    if state.get("batch") is None:
        return []
    page = max(int(page or 1), 1)
    rows = store.items_page(state["batch"], _name(annotator), (page - 1) * PAGE_SIZE, PAGE_SIZE)
    return [[item.position + 1, _shorten(item.question), n, "yes" if judged else ""] for item, n, judged in rows]


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def open_from_table(store: Store, state: dict, annotator: str, page: float | None, evt: gr.SelectData) -> tuple:
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    number = (max(int(page or 1), 1) - 1) * PAGE_SIZE + int(row) + 1
    return go_to(store, state, annotator, number)


def export_download(store: Store, fmt: str):
    """Export buttons: the file to download (none when empty), the summary with agreement and, for an
    empty export, why it is empty; the label chart."""
    folder = Path(tempfile.mkdtemp(prefix="cap-export-"))
    suffix = "csv" if fmt == "csv" else "jsonl"
    summary = export.export(store, fmt, folder / f"cap-{fmt}.{suffix}")
    return (
        summary.output if summary.rows_written else None,
        f"<pre>{html.escape(summary.text(full_path=False))}</pre>",
        label_counts_figure(summary),
    )


def _bind(fn, store: Store, **kwargs):
    """`fn` with the store (and fixed arguments) filled in, keeping its name for the API listing."""
    bound = functools.partial(fn, store, **kwargs)
    bound.__name__ = "annotate_" + "_".join([fn.__name__, *map(str, kwargs.values())]).replace("-", "back")
    return bound


def remembered_name(name: str | None) -> str:
    """The annotator name as the browser keeps it between visits (see build_annotator_tab)."""
    return _name(name)


def saved_name_state() -> gr.BrowserState:
    """Where the browser keeps the annotator name, so a reload or a later visit keeps it. Place it
    outside any Tab: a tab that is not shown is not mounted, and its state would not be read
    when the page loads."""
    return gr.BrowserState("", storage_key="cap-annotator-name")


def build_annotator_tab(demo: gr.Blocks, saved_name: gr.BrowserState, store: Store | None = None) -> None:
    """Lay out the Annotate tab inside `demo` (and a Tab) and wire its events; `saved_name`
    comes from `saved_name_state`."""
    store = store or Store()
    bind = _bind
    state = gr.State(new_state())
    with gr.Column(elem_id="cap-annotator"):
        gr.Markdown(
            "Judge refinements in bulk. Every choice is saved the moment you make it. Shortcuts: "
            + "; ".join(f"**{keys}** {what}" for keys, what in SHORTCUTS)
            + "."
        )
        with gr.Row():
            annotator = gr.Textbox(label="Annotator name", max_lines=1, max_length=80, elem_id="cap-ann-name")
            batch = gr.Dropdown(batch_choices(store), value=None, label="Batch", elem_id="cap-ann-batch")
        with gr.Accordion("Load a batch (JSONL or CSV)", open=True):
            with gr.Row():
                upload = gr.File(label="Upload", file_types=[".jsonl", ".json", ".csv"], type="filepath")
                with gr.Column():
                    path = gr.Textbox(label="...or a path on the server", max_lines=1, elem_id="cap-ann-path")
                    draft_key = gr.Dropdown(list(item_files.DRAFT_KEYS), value="draft", label="Draft field")
                    load = gr.Button("Load", elem_id="cap-ann-load")
            report = gr.Markdown(elem_id="cap-ann-report")
        progress = gr.HTML(progress_html(store, None, ""), elem_id="cap-ann-progress")
        with gr.Row():
            prev_button = gr.Button("◀ Previous (k)", elem_id="cap-ann-prev")
            # No `minimum` on this and the step field: the page shows an empty gr.Number as 0 and marks
            # 0 red as below a minimum of 1, before anything is done. go_to clamps the item number and
            # the store refuses a step below 1, each with its own message.
            position = gr.Number(label="Item", precision=0, elem_id="cap-ann-position")
            next_button = gr.Button("Next (j) ▶", elem_id="cap-ann-next")
            unjudged_button = gr.Button("Next unjudged (g)", elem_id="cap-ann-unjudged")
            undo_button = gr.Button("Undo last change (z)", elem_id="cap-ann-undo")
        status = gr.HTML(elem_id="cap-ann-status")
        shown = gr.Textbox("null", visible=False, elem_id="cap-ann-shown")
        question = gr.HTML(elem_id="cap-ann-question")
        draft = gr.HTML(label="Draft steps", elem_id="cap-ann-draft")
        with gr.Row():
            refinement = gr.Radio([], label="Refinement", elem_id="cap-ann-refinement")
            with gr.Column():
                with gr.Row():
                    model = gr.Dropdown(model_choices(), value=model_choices()[0], label="Model")
                    strategy = gr.Dropdown(
                        list(STRATEGIES), value=handlers.default_settings()["strategy"], label="Strategy"
                    )
                    max_new_tokens = handlers.setting_slider("max_new_tokens", "Max new tokens")
                run = gr.Button("Run refinement (r)", elem_id="cap-ann-run")
        verdict = gr.HTML(elem_id="cap-ann-verdict")
        with gr.Group():
            with gr.Row():
                correct = gr.Radio(list(CORRECT_CHOICES), label="Refinement correct?", elem_id="cap-ann-correct")
                vs_draft = gr.Radio(list(VS_DRAFT_CHOICES), label="Compared to the draft", elem_id="cap-ann-vs")
                first_wrong_step = gr.Number(
                    label="First wrong step of the draft (empty: none)", precision=0, elem_id="cap-ann-step"
                )
            note = gr.Textbox(
                label="Note (saved when you leave the field or press Enter)",
                max_lines=3,
                max_length=5000,
                elem_id="cap-ann-note",
            )
        side_by_side = gr.HTML(elem_id="cap-ann-side-by-side")
        with gr.Row():
            trace = gr.Dataframe(headers=TRACE_HEADERS, label="Trace", interactive=False, wrap=True)
            votes = gr.Plot(label="Answer votes")
        with gr.Accordion("All items", open=False):
            page = gr.Number(value=1, precision=0, minimum=1, label=f"Page ({PAGE_SIZE} items each)")
            table = gr.Dataframe(headers=PAGE_HEADERS, interactive=False, wrap=True, elem_id="cap-ann-items")
        with gr.Accordion("Export", open=False):
            with gr.Row():
                export_buttons = {
                    fmt: gr.Button(label, elem_id=f"cap-ann-export-{fmt}") for fmt, label in EXPORT_BUTTONS
                }
            download = gr.File(label="Download", interactive=False)
            summary = gr.HTML(elem_id="cap-ann-export-summary")
            chart = gr.Plot(label="Labels per annotator")
        gr.HTML("", js_on_load=SHORTCUTS_JS, elem_id="cap-ann-shortcuts")

    view = [
        state,
        progress,
        position,
        question,
        draft,
        refinement,
        verdict,
        side_by_side,
        trace,
        votes,
        correct,
        vs_draft,
        first_wrong_step,
        note,
        status,
        shown,
    ]
    db = dict(concurrency_limit=None)  # SQLite serialises writers itself
    load.click(bind(load_file, store), [upload, path, draft_key, annotator], [batch, report, *view], **db)
    batch.focus(bind(refresh_batches, store), [state], batch, **db)
    batch.input(bind(open_batch, store), [state, batch, annotator], view, **db)
    gr.on(
        [annotator.submit, annotator.blur], bind(choose_refinement, store), [state, annotator, refinement], view, **db
    )
    gr.on([annotator.submit, annotator.blur], remembered_name, annotator, saved_name, **db)
    # Restored in the browser, not through the server: a late answer from a busy server would
    # overwrite a name typed meanwhile (a judgement then reads "enter your annotator name first").
    demo.load(None, saved_name, annotator, js="(saved) => saved || ''")
    position.submit(bind(go_to, store), [state, annotator, position], view, **db)
    prev_button.click(bind(step, store, delta=-1), [state, annotator], view, **db)
    next_button.click(bind(step, store, delta=1), [state, annotator], view, **db)
    unjudged_button.click(bind(next_unjudged, store), [state, annotator], view, **db)
    undo_button.click(bind(undo, store), [state, annotator], view, **db)
    refinement.input(bind(choose_refinement, store), [state, annotator, refinement], view, **db)
    run.click(
        bind(run_refinement, store),
        [state, annotator, model, strategy, max_new_tokens],
        view,
        concurrency_limit=CONCURRENCY_LIMIT,
        concurrency_id="generation",
    )
    judged = gr.on(
        [correct.input, vs_draft.input, first_wrong_step.submit, first_wrong_step.blur, note.submit, note.blur],
        bind(record_judgement, store),
        [state, annotator, correct, vs_draft, first_wrong_step, note, shown],
        [status, progress, correct, vs_draft],
        **db,
    )
    for event in (page.submit, state.change, judged.then):
        event(bind(items_page, store), [state, annotator, page], table, **db)

    def annotate_open_row(state: dict, annotator: str, page: float | None, evt: gr.SelectData) -> tuple:
        return open_from_table(store, state, annotator, page, evt)  # gradio finds `evt` by its annotation

    table.select(annotate_open_row, [state, annotator, page], view, **db)
    for fmt, button in export_buttons.items():
        button.click(bind(export_download, store, fmt=fmt), None, [download, summary, chart], **db)
