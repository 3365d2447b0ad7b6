"""The Annotate tab's layout: load a batch, inspect each refinement, judge it, export training data.

The components and their wiring only; what each event does is cap_app.ui.annotate_handlers. The
page's own scripts live here too: the keyboard shortcuts, and the numbering that keeps judgements
made at any speed in key order.
"""

from __future__ import annotations

import inspect
import json
import types
import typing

import gradio as gr

from cap_app.annotate import accounts, item_files
from cap_app.annotate.export import FORMATS
from cap_app.annotate.store import CORRECT_CHOICES, MAX_NOTE_CHARS, VS_DRAFT_CHOICES, Store
from cap_app.engine.strategies import STRATEGIES
from cap_app.engine.triage import TRIAGE_EXPLANATION
from cap_app.ui import annotate_handlers as handlers
from cap_app.ui import settings
from cap_app.ui.annotate_handlers import PAGE_SIZE, VIEW
from cap_app.ui.hosting import CONCURRENCY_LIMIT, model_choices, storage_notice
from cap_app.ui.views import TRACE_HEADERS

PAGE_HEADERS = ["#", "question", "refinements", "judged by you", "verdict", "program answer", "draft answer"]
# The judging keys: one per value of the store's choices, in their order, and the radios they click.
JUDGING_KEYS = {
    "correct": ("refinement correct", CORRECT_CHOICES, ("y", "n", "u"), "cap-ann-correct"),
    "vs_draft": ("vs draft", VS_DRAFT_CHOICES, ("b", "s", "w"), "cap-ann-vs"),
}
SHORTCUTS = (
    *((" / ".join(keys), f"{what}: {' / '.join(values)}") for what, values, keys, _ in JUDGING_KEYS.values()),
    ("j / k", "next / previous item"),
    ("g", "next unjudged"),
    ("z", "undo your last change"),
    ("r", "run a refinement"),
)
# Keys click the matching control; ignored while typing in a field or when this tab is hidden. A
# judging key (a radio, or z) also queues what it asked for with its number in key order, for
# NUMBERED_JS: Gradio reads a component's value a moment after the click, when a later key (or a
# reply) may have changed it already, and sends events that fast in any order. A radio already showing
# that value is left alone (clicking it again would send nothing and leave its value queued).
SHORTCUTS_JS = """
if (!window.capAnnotatorKeys) {
  window.capAnnotatorKeys = true;
  window.capAnnChosen = window.capAnnChosen || {};
  const radios = RADIOS;
  const boxes = BOXES;
  const buttons = {
    j: '#cap-ann-next', k: '#cap-ann-prev', g: '#cap-ann-unjudged', z: '#cap-ann-undo', r: '#cap-ann-run',
  };
  const queue = (name, entry) => {
    window.capAnnSeq = (window.capAnnSeq || 0) + 1;
    (window.capAnnChosen[name] = window.capAnnChosen[name] || []).push({...entry, seq: window.capAnnSeq});
  };
  document.addEventListener('keydown', (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    const typing = target && (target.isContentEditable || target.tagName === 'TEXTAREA' || target.tagName === 'SELECT'
      || (target.tagName === 'INPUT' && target.type !== 'radio'));
    const tab = document.getElementById('cap-annotator');
    if (typing || !tab || tab.offsetParent === null) return;
    if (event.key in radios) {
      const [field, value] = radios[event.key];
      const control = document.querySelector(`#${boxes[field]} input[value="${value}"]`);
      if (!control) return;
      event.preventDefault();
      if (control.checked) return;
      queue(field, {value});
      control.click();
    } else if (event.key in buttons) {
      const control = document.querySelector(buttons[event.key]);
      if (!control) return;
      event.preventDefault();
      if (event.key === 'z') queue('undo', {});
      control.click();
    }
  });
}
"""
SHORTCUTS_JS = SHORTCUTS_JS.replace(
    "RADIOS",
    json.dumps(
        {
            key: [field, value]
            for field, (_, values, keys, _) in JUDGING_KEYS.items()
            for key, value in zip(keys, values, strict=True)
        }
    ),
).replace("BOXES", json.dumps({field: box for field, (*_, box) in JUDGING_KEYS.items()}))
# Runs in the browser before a judgement or an undo is sent: the value a key chose and the key's
# number (a mouse click queues nothing: it sends the component's value and the next number). The
# server runs a session's numbered calls in that order (SessionOrder).
NUMBERED_JS = """
(...values) => {
  window.capAnnChosen = window.capAnnChosen || {};
  const next = (window.capAnnChosen[QUEUE] || []).shift();
  if (next && 'value' in next) values[1] = next.value;
  if (!next) window.capAnnSeq = (window.capAnnSeq || 0) + 1;
  values[values.length - 1] = String(next ? next.seq : window.capAnnSeq);
  return values;
}
"""
# Runs in the browser when a judgement's reply arrives: the status, progress and radios show the
# newest reply (by the store's order: replies may arrive out of order), the radios only while the
# page still shows the item judged (a reply may arrive after "j" moved on).
SHOW_STORED_JS = """
(stored, shown, correct, vs, status, progress) => {
  try {
    const reply = JSON.parse(stored);
    if (reply && (!window.capAnnNewest || reply.stamp > window.capAnnNewest.stamp)) window.capAnnNewest = reply;
    const newest = window.capAnnNewest;
    if (newest) {
      const same = newest.shown === shown;
      return [same ? newest.correct : correct, same ? newest.vs_draft : vs, newest.status, newest.progress];
    }
  } catch (error) {}
  return [correct, vs, status, progress];
}
"""


def _bind(fn, store: Store, **fixed):
    """`fn` with the store (and fixed keyword arguments) filled in, as a real function whose signature
    and annotations are fn's remaining ones, so that Gradio passes it the request, the OAuth profile
    and event data (it finds them by annotation, which a functools.partial hides), keeping fn's name
    for the API listing."""
    hints = typing.get_type_hints(fn)
    params = [p for p in list(inspect.signature(fn).parameters.values())[1:] if p.name not in fixed]

    def bound(*args):
        return fn(store, *args, **fixed)

    bound.__signature__ = inspect.Signature([p.replace(kind=p.POSITIONAL_OR_KEYWORD) for p in params])
    bound.__annotations__ = {p.name: hints[p.name] for p in params if p.name in hints}
    bound.__name__ = "annotate_" + "_".join([fn.__name__, *map(str, fixed.values())]).replace("-", "back")
    return bound


def build_annotate_tab(demo: gr.Blocks, store: Store | None = None) -> None:
    """Lay out the Annotate tab inside `demo` (and a Tab) and wire its events."""
    store = store or Store()
    state = gr.State(handlers.new_state())
    with gr.Column(elem_id="cap-annotator"):
        tab = types.SimpleNamespace(state=state, **_header(store))
        vars(tab).update(_loader())
        vars(tab).update(_navigation(store))
        vars(tab).update(_item_and_runner())
        vars(tab).update(_judgement_form())
        vars(tab).update(_result_panels())
        vars(tab).update(_items_table())
        vars(tab).update(_admin_panel())
        gr.HTML("", js_on_load=SHORTCUTS_JS, elem_id="cap-ann-shortcuts")
    view = [getattr(tab, name) for name in VIEW]
    _wire_batches(demo, store, tab, view)
    _wire_navigation(store, tab, view)
    _wire_judgements(store, tab)
    _wire_refine_all(store, tab, view)
    _wire_admin(store, tab, view)


def _header(store: Store) -> dict:
    gr.Markdown(
        "Judge refinements in bulk. Every choice is saved the moment you make it. Shortcuts: "
        + "; ".join(f"**{keys}** {what}" for keys, what in SHORTCUTS)
        + "."
    )
    gr.Markdown(storage_notice(store.path), elem_id="cap-ann-storage")  # empty unless a restart loses them
    if accounts.oauth_configured():
        gr.LoginButton(elem_id="cap-ann-login")
    return dict(access=gr.HTML(elem_id="cap-ann-access"))


def _loader() -> dict:
    """The batch list and the Load accordion: an upload or a path on the server."""
    batch = gr.Dropdown([], value=None, label="Batch", elem_id="cap-ann-batch")
    with gr.Accordion("Load a batch (JSONL or CSV)", open=True):
        with gr.Row():
            # Choosing a file logs "warning: Method not implemented." twice in the browser console:
            # Gradio's own, not ours (issue 25 item 9). Its upload progress bar (UploadProgress, in
            # gradio 6.31's assets/src-COXhnU3J.js) reads /gradio_api/upload_progress through the
            # client's EventSource stand-in (readable_stream, assets/index-DphvyggB.js line 4, whose
            # `close: () => { console.warn("Method not implemented.") }`), and closes it twice: on
            # the "done" message (`u?.close(), a.ondone?.()`) and again when it is destroyed. The
            # upload itself completes; nothing of ours takes part, so it is left as it is.
            upload = gr.File(
                label="Upload", file_types=[".jsonl", ".json", ".csv"], type="filepath", elem_id="cap-ann-upload"
            )
            with gr.Column():
                path = gr.Textbox(label="...or a path on the server (admins)", max_lines=1, elem_id="cap-ann-path")
                draft_key = gr.Dropdown(list(item_files.DRAFT_KEYS), value="draft", label="Draft field")
                load = gr.Button("Load", elem_id="cap-ann-load")
        report = gr.Markdown(elem_id="cap-ann-report")
    return dict(batch=batch, upload=upload, path=path, draft_key=draft_key, load=load, report=report)


def _navigation(store: Store) -> dict:
    """Progress, the item buttons, the status line and the hidden fields that tag each judgement."""
    progress = gr.HTML(handlers.progress_html(store, None, None), elem_id="cap-ann-progress")
    with gr.Row():
        prev_button = gr.Button("◀ Previous (k)", elem_id="cap-ann-prev")
        # A text box, as is the step field: Gradio's number field shows an empty value as 0 (its
        # Number component sets `value ??= 0`), and 0 is neither an item nor a step. go_to reads
        # and clamps the item number; the handlers and the store check the step, with messages.
        position = gr.Textbox(label="Item", max_lines=1, elem_id="cap-ann-position")
        next_button = gr.Button("Next (j) ▶", elem_id="cap-ann-next")
        unjudged_button = gr.Button("Next unjudged (g)", elem_id="cap-ann-unjudged")
        undo_button = gr.Button("Undo last change (z)", elem_id="cap-ann-undo")
    with gr.Row():
        # One order for Next unjudged, where a batch opens and the items table. Triage is the default:
        # while no item has a refinement it is item order.
        order = gr.Radio(
            handlers.ORDER_CHOICES, value="triage", label="Order (Next unjudged and All items)", elem_id="cap-ann-order"
        )
        gr.Markdown(TRIAGE_EXPLANATION, elem_id="cap-ann-triage-explanation")
    return dict(
        order=order,
        progress=progress,
        prev_button=prev_button,
        position=position,
        next_button=next_button,
        unjudged_button=unjudged_button,
        undo_button=undo_button,
        status=gr.HTML(elem_id="cap-ann-status"),
        shown=gr.Textbox("null", visible=False, elem_id="cap-ann-shown"),
        # The stored form of the last judgement, for SHOW_STORED_JS; in the DOM, so its change event runs.
        stored=gr.Textbox("", visible="hidden", elem_id="cap-ann-stored"),
        number=gr.Textbox("", visible=False, elem_id="cap-ann-number"),  # set by NUMBERED_JS as each call is sent
    )


def _item_and_runner() -> dict:
    """The question, the draft's numbered steps, the refinements and the controls that run one more."""
    question = gr.HTML(elem_id="cap-ann-question")
    draft = gr.HTML(label="Draft steps", elem_id="cap-ann-draft")
    with gr.Row():
        refinement = gr.Radio([], label="Refinement", elem_id="cap-ann-refinement")
        with gr.Column():
            with gr.Row():
                model = gr.Dropdown(model_choices(), value=model_choices()[0], label="Model")
                strategy = gr.Dropdown(
                    list(STRATEGIES), value=settings.default_settings()["strategy"], label="Strategy"
                )
                max_new_tokens = settings.setting_slider("max_new_tokens", "Max new tokens")
            run = gr.Button("Run refinement (r)", elem_id="cap-ann-run")
            with gr.Row():
                # Refine all: every item without a refinement, on the server in the background, with the
                # settings above (admins only); the line is everyone's, refreshed while the job runs.
                refine_all_button = gr.Button("Refine all (admins)", elem_id="cap-ann-refine-all")
                stop_button = gr.Button("Stop", variant="stop", elem_id="cap-ann-refine-stop")
            refine_all_line = gr.HTML(elem_id="cap-ann-refine-all-line")
            refine_all_timer = gr.Timer(handlers.REFRESH_IDLE_S, active=False)  # on while a batch is open
    verdict = gr.HTML(elem_id="cap-ann-verdict")
    return dict(
        question=question,
        draft=draft,
        refinement=refinement,
        model=model,
        strategy=strategy,
        max_new_tokens=max_new_tokens,
        run=run,
        refine_all_button=refine_all_button,
        stop_button=stop_button,
        refine_all_line=refine_all_line,
        refine_all_timer=refine_all_timer,
        verdict=verdict,
    )


def _judgement_form() -> dict:
    with gr.Group():
        with gr.Row():
            correct = gr.Radio(list(CORRECT_CHOICES), label="Refinement correct?", elem_id="cap-ann-correct")
            vs_draft = gr.Radio(list(VS_DRAFT_CHOICES), label="Compared to the draft", elem_id="cap-ann-vs")
            first_wrong_step = gr.Textbox(
                label="First wrong step of the draft (empty: none)", max_lines=1, elem_id="cap-ann-step"
            )
        note = gr.Textbox(
            label="Note (saved when you leave the field or press Enter)",
            max_lines=3,
            max_length=MAX_NOTE_CHARS,
            elem_id="cap-ann-note",
        )
    return dict(correct=correct, vs_draft=vs_draft, first_wrong_step=first_wrong_step, note=note)


def _result_panels() -> dict:
    side_by_side = gr.HTML(elem_id="cap-ann-side-by-side")
    with gr.Row():
        trace = gr.Dataframe(headers=TRACE_HEADERS, label="Trace", interactive=False, wrap=True)
        votes = gr.Plot(label="Answer votes")
    return dict(side_by_side=side_by_side, trace=trace, votes=votes)


def _items_table() -> dict:
    with gr.Accordion("All items", open=False):
        with gr.Row():
            page = gr.Number(value=1, precision=0, minimum=1, label=f"Page ({PAGE_SIZE} items each)")
            verdict_filter = gr.Dropdown(
                handlers.VERDICT_CHOICES,
                value="all",
                label="Verdict of the newest refinement",
                elem_id="cap-ann-filter",
            )
        table = gr.Dataframe(headers=PAGE_HEADERS, interactive=False, wrap=True, elem_id="cap-ann-items")
    return dict(page=page, verdict_filter=verdict_filter, table=table)


def _admin_panel() -> dict:
    """Export (one button per format of cap_app.annotate.export.FORMATS), agreement, delete."""
    with gr.Accordion("Admin: export, agreement, delete", open=False):
        with gr.Row():
            export_buttons = {
                name: gr.Button(fmt.label, elem_id=f"cap-ann-export-{name}") for name, fmt in FORMATS.items()
            }
        download = gr.File(label="Download", interactive=False)
        summary = gr.HTML(elem_id="cap-ann-export-summary")
        chart = gr.Plot(label="Labels per annotator")
        with gr.Row():
            confirm = gr.Textbox(label="Type the open batch's name to delete it", max_lines=1)
            delete = gr.Button("Delete this batch and its judgements", variant="stop", elem_id="cap-ann-delete")
    return dict(
        export_buttons=export_buttons, download=download, summary=summary, chart=chart, confirm=confirm, delete=delete
    )


DB = dict(concurrency_limit=None)  # SQLite serialises writers itself
# Judgements and undo: every click is sent (even while an earlier one is pending), numbered in key
# order, and run in that order per session (SessionOrder), so keys pressed at any speed are each
# stored, in order.
ORDERED = dict(concurrency_limit=None, trigger_mode="multiple")


def _wire_batches(demo: gr.Blocks, store: Store, tab, view: list) -> None:
    """Sign-in line, reload, the batch list and the Load button."""
    demo.load(handlers.access_html, None, tab.access, **DB)
    demo.load(_bind(handlers.reopen, store), [tab.state], [tab.batch, *view], **DB)  # a reload reopens the batch
    tab.state.change(_bind(handlers.remember, store), [tab.state], None, api_visibility="private", **DB)
    tab.load.click(
        _bind(handlers.load_file, store),
        [tab.state, tab.upload, tab.path, tab.draft_key, tab.order],
        [tab.batch, tab.report, *view],
        **DB,
    )
    # The Load button reads one source: choosing a file clears the path, typing a path clears the upload
    # (in the browser only), so what Load reads is what was touched last.
    # (A js-only event returning null leaves Gradio's File showing its file, so these go to the server.)
    quiet = dict(api_visibility="private", queue=False, trigger_mode="always_last")
    tab.upload.upload(handlers.cleared_path, None, tab.path, **quiet)
    tab.path.change(handlers.cleared_upload, [tab.path], tab.upload, **quiet)
    tab.batch.focus(_bind(handlers.refresh_batches, store), [tab.state], tab.batch, **DB)
    tab.batch.input(_bind(handlers.open_batch, store), [tab.state, tab.batch, tab.order], view, **DB)


def _wire_navigation(store: Store, tab, view: list) -> None:
    """Moving between items and refinements, running one more, undo and the items table."""
    state = tab.state
    tab.position.submit(_bind(handlers.go_to, store), [state, tab.position], view, **DB)
    tab.prev_button.click(_bind(handlers.step, store, delta=-1), [state], view, **DB)
    tab.next_button.click(_bind(handlers.step, store, delta=1), [state], view, **DB)
    tab.unjudged_button.click(_bind(handlers.next_unjudged, store), [state, tab.order], view, **DB)
    tab.undo_button.click(
        _bind(handlers.undo, store), [state, tab.number], view, js=NUMBERED_JS.replace("QUEUE", '"undo"'), **ORDERED
    )
    tab.refinement.input(_bind(handlers.choose_refinement, store), [state, tab.refinement], view, **DB)
    tab.run.click(
        _bind(handlers.run_refinement, store),
        [state, tab.model, tab.strategy, tab.max_new_tokens],
        view,
        concurrency_limit=CONCURRENCY_LIMIT,
        concurrency_id="generation",
    )
    listed = [state, tab.page, tab.order, tab.verdict_filter]  # the table's page, order and filter
    gr.on(
        [tab.page.submit, state.change, tab.order.change, tab.verdict_filter.change],
        _bind(handlers.items_page, store),
        listed,
        tab.table,
        **DB,
    )
    tab.table.select(_bind(handlers.open_from_table, store), listed, view, **DB)


def _wire_judgements(store: Store, tab) -> None:
    """Each form field is saved by its own events, numbered in key order; the newest reply is shown."""
    events = {
        "correct": [tab.correct.input],
        "vs_draft": [tab.vs_draft.input],
        "first_wrong_step": [tab.first_wrong_step.submit, tab.first_wrong_step.blur],
        "note": [tab.note.submit, tab.note.blur],
    }
    for field, triggers in events.items():
        judged = gr.on(
            triggers,
            _bind(handlers.record_judgement, store, field=field),
            [tab.state, getattr(tab, field), tab.shown, tab.number],
            [getattr(tab, name) for name in handlers.JUDGED],
            js=NUMBERED_JS.replace("QUEUE", json.dumps(field)),
            **ORDERED,
        )
        judged.then(
            _bind(handlers.items_page, store), [tab.state, tab.page, tab.order, tab.verdict_filter], tab.table, **DB
        )
    watched = [tab.correct, tab.vs_draft, tab.status, tab.progress]
    tab.stored.change(None, [tab.stored, tab.shown, *watched], watched, js=SHOW_STORED_JS)


def _wire_refine_all(store: Store, tab, view: list) -> None:
    """Refine all and Stop, and the progress line: shown when a batch opens and refreshed (with the
    items table, which fills in as items are refined, and an item shown before it had a refinement)
    every tick of the timer, often while the job runs."""
    shown = [getattr(tab, name) for name in handlers.REFINE_ALL]
    tab.refine_all_button.click(
        _bind(handlers.refine_all, store), [tab.state, tab.model, tab.strategy, tab.max_new_tokens], shown, **DB
    )
    tab.stop_button.click(_bind(handlers.stop_refine_all, store), [tab.state], shown, **DB)
    # Ticks redraw quietly: no loading overlay on the line, the item or the table every few seconds.
    quiet = dict(show_progress="hidden", **DB)
    gr.on(
        [tab.state.change, tab.refine_all_timer.tick],
        _bind(handlers.refine_all_status, store),
        [tab.state],
        shown,
        **quiet,
    )
    tab.refine_all_timer.tick(
        _bind(handlers.show_arrived_refinement, store),
        [tab.state, tab.shown, tab.refinement],
        view,
        api_visibility="private",
        **quiet,
    )
    tab.refine_all_timer.tick(
        _bind(handlers.items_page, store),
        [tab.state, tab.page, tab.order, tab.verdict_filter],
        tab.table,
        api_visibility="private",
        **quiet,
    )


def _wire_admin(store: Store, tab, view: list) -> None:
    for fmt, button in tab.export_buttons.items():
        button.click(
            _bind(handlers.export_download, store, fmt=fmt), None, [tab.download, tab.summary, tab.chart], **DB
        )
    tab.delete.click(_bind(handlers.delete_batch, store), [tab.state, tab.confirm], [tab.batch, *view], **DB)
