"""Event handlers of the Refine tab: plain functions, importable and testable without a browser.

They hold no refinement logic: `refine_page` builds the same RefineConfig the CLI builds, calls
the engine's `refine_stream`, and turns its events into page values (views, alignment, charts).
Each yield is a full tuple in the order of `OUTPUTS`; `gr.skip()` leaves a component as it is.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator

import gradio as gr

from cap_app.backends import priority
from cap_app.engine.program import streamed_program
from cap_app.engine.reading import read_result
from cap_app.ui import views
from cap_app.ui.charts import candidates_figure, stage_times_figure, votes_figure
from cap_app.ui.settings import backend_config, model_config, refine_config

OUTPUTS = ("status", "code", "verdict", "side_by_side", "trace", "stdout", "votes", "times", "candidates")
PREPARATION_TICK_S = 1.0  # how often a visitor waiting for the model sees its step and time
STREAM_INTERVAL_S = 0.1  # at most ~10 code-view updates a second: the browser, not the model, is the limit

logger = logging.getLogger(__name__)
_cancel_events: dict[str, threading.Event] = {}  # browser session -> its running refinement
_cancel_lock = threading.Lock()


def _cancel_event(request: gr.Request | None) -> threading.Event:
    """A fresh cancel event for this browser session (a Stop click sets it)."""
    event = threading.Event()
    if request is not None and request.session_hash:
        with _cancel_lock:
            _cancel_events[request.session_hash] = event
    return event


def _forget_cancel_event(request: gr.Request | None, event: threading.Event) -> None:
    if request is not None and request.session_hash:
        with _cancel_lock:
            if _cancel_events.get(request.session_hash) is event:
                del _cancel_events[request.session_hash]


def stop_refinement(request: gr.Request | None = None) -> str:
    """Stop button: ask the running refinement of this session to stop at its next token."""
    with _cancel_lock:
        event = _cancel_events.get(request.session_hash) if request is not None else None
    if event is None or event.is_set():
        return "Nothing to stop."
    event.set()
    return "Stopping…"


def _frame(**values) -> tuple:
    """A full output tuple: the given values, gr.skip() for the rest."""
    unknown = set(values) - set(OUTPUTS)
    assert not unknown, unknown
    return tuple(values.get(name, gr.skip()) for name in OUTPUTS)


def _cleared(status: str, verdict: str = "") -> tuple:
    """Every view emptied: nothing of an earlier refinement may stay beside a new message or run."""
    return _frame(
        status=status,
        code="",
        verdict=verdict,
        side_by_side="",
        trace=[],
        stdout="",
        votes=None,
        times=None,
        candidates=gr.update(value=None, visible=False),
    )


def shown_program(program: str, raw_text: str) -> str:
    """The program, or, when none could be pulled out, the model's reply as comments (so it is visible)."""
    if program.strip():
        return program
    comments = ("# " + line for line in raw_text.splitlines())
    return "\n".join(["# No Python program found in the model's reply:", *comments])


def result_frame(result, status: str) -> tuple:
    """Every view of a finished refinement, from its one Reading."""
    shown = result.shown_candidate
    code = shown_program(shown.program, shown.text) if shown else ""
    reading = read_result(result)
    many = len(result.candidates) > 1
    return _frame(
        status=status,
        code=code,
        verdict=views.verdict_html(reading),
        side_by_side=views.render_side_by_side(reading),
        trace=views.trace_table(result),
        stdout=views.execution_text(result),
        votes=votes_figure(reading),
        times=stage_times_figure(result),
        candidates=gr.update(value=candidates_figure(result) if many else None, visible=many),
    )


def refine_page(
    question: str,
    draft: str,
    gold: str,
    model_choice: str,
    strategy: str,
    n: float,
    temperature: float,
    max_new_tokens: float,
    time_limit_s: float,
    backend_choice: str = "auto",
    override: str = "located",
    request: gr.Request | None = None,
) -> Iterator[tuple]:
    """Refine button: stream the program into the code view, then show verdict, alignment, trace, charts."""
    from cap_app.engine.inputs import InputError, RefineItem

    try:
        item = RefineItem(question, draft, (gold or "").strip() or None)  # checked before a model loads
        config = refine_config(strategy, n, temperature, max_new_tokens, time_limit_s, override)
        model_cfg = model_config(model_choice)
        backend_cfg = backend_config(backend_choice)
    except (InputError, ValueError, TypeError) as error:
        yield _cleared("", views.message_html(f"Cannot refine: {error}", "warning"))
        return
    cancel = _cancel_event(request)
    try:
        with priority.interactive():  # a batch refinement starts no new item while a visitor waits
            yield from _run_refinement(item, config, model_cfg, backend_cfg, cancel)
    except Exception as error:  # an engine failure must reach the visitor as a message, not a traceback
        logger.exception("refinement failed")
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        yield _frame(status="", verdict=views.message_html(f"The refinement failed: {detail}", "error"))
    finally:
        cancel.set()  # stops generation when the visitor went away mid-stream
        _forget_cancel_event(request, cancel)


def _run_refinement(item, config, model_cfg, backend_cfg, cancel: threading.Event) -> Iterator[tuple]:
    from cap_app.backends import BackendError, preparation
    from cap_app.backends.base import ContextError
    from cap_app.engine.refine import refine_stream
    from cap_app.models.loading import ModelLoadError

    loading = preparation.load(model_cfg, backend_cfg)  # joins the app's own preparation while it runs
    yield _cleared(loading.status())
    while not loading.done.wait(PREPARATION_TICK_S):
        if cancel.is_set():
            yield _frame(status="Stopped.")
            return
        yield _frame(status=loading.status())
    try:
        backend = loading.result()
    except (ModelLoadError, BackendError) as error:
        yield _frame(status="", verdict=views.message_html(f"The model could not be loaded: {error}", "error"))
        return
    programs = config.generation_config().n
    yield _frame(status=f"Writing {_programs(programs)} with {backend.description}…")
    raw: dict[int, str] = {}  # what the model wrote, per program
    finished: dict[int, str] = {}  # the programs pulled out of it, once written
    tokens: dict[int, int] = {}
    last_update, began = 0.0, time.monotonic()
    reading: tuple[float, int, str] | None = None  # (since, prompt tokens, note) while the model reads
    read_s, limit = 0.0, config.max_new_tokens
    events = refine_stream(item, config=config, backend=backend, cancel=cancel)
    try:
        for event in _with_ticks(events, TICK_S):
            now = time.monotonic()
            if event is None or event.kind == "prompt":  # a tick, or a prompt the model starts reading
                if event is not None:
                    reading, limit = (now, event.tokens, event.text), event.limit
                if reading is not None:
                    status = reading_status(backend.description, reading[1], now - reading[0], reading[2])
                    # Stop takes effect at the prompt's next batch (llama.cpp) or its first token
                    yield _frame(status=f"Stopping… {status}" if cancel.is_set() else status)
                continue
            if reading is not None:  # the first token: the prompt is read
                read_s, reading = now - reading[0], None
            if event.kind == "token":
                raw[event.candidate] = raw.get(event.candidate, "") + event.text
                tokens[event.candidate] = event.tokens
                if now - last_update >= STREAM_INTERVAL_S:
                    last_update = now
                    yield _frame(
                        code=_programs_text(raw, finished),
                        status=writing_status(backend.description, tokens, limit, now - began, programs, read_s),
                    )
            elif event.kind == "program":
                finished[event.candidate] = shown_program(event.text, raw.get(event.candidate, ""))
                yield _frame(
                    code=_programs_text(raw, finished), status=f"Running program {event.candidate + 1} in the sandbox…"
                )
            elif event.kind == "executed":
                yield _frame(status=f"Program {event.candidate + 1}: {_outcome(event.outcome)}.")
            elif event.kind == "done":
                yield result_frame(event.result, "Done.")
                return
    except ContextError as error:
        yield _frame(status="", verdict=views.message_html(f"Cannot refine: {error}", "warning"))
        return
    # the engine ends the stream without a result only when it was cancelled
    yield _frame(code=_programs_text(raw, finished), status="Stopped." if cancel.is_set() else "No result.")


TICK_S = 1.0  # how often the status counts the seconds while nothing else happens (the model reads a prompt)


def _with_ticks(events: Iterator, interval_s: float) -> Iterator:
    """The engine's events, and None after each `interval_s` without one: reading a long prompt
    takes seconds before the first token (29 s for a 7,000-character draft on 2 CPUs), and the page
    must show that time pass. The events are drawn in a thread of their own; an error is re-raised
    here, and a consumer that stops early leaves that thread to end with the (cancelled) stream."""
    out: queue.Queue = queue.Queue()
    end = object()

    def draw() -> None:
        try:
            for event in events:
                out.put(event)
        except BaseException as error:  # re-raised in the consumer's thread
            out.put(error)
        out.put(end)

    threading.Thread(target=draw, name="cap-refine-events", daemon=True).start()
    while True:
        try:
            item = out.get(timeout=interval_s)
        except queue.Empty:
            yield None
            continue
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _programs(count: int) -> str:
    return "a program" if count == 1 else f"{count} programs"


def _outcome(candidate) -> str:
    """How a program's run ended, in words; a program cut off by generation is named as such."""
    if candidate.cut_off:
        return candidate.cut_off
    execution = candidate.execution
    return f"{execution.status} ({execution.answer if execution.ok else execution.error})"


def reading_status(model: str, prompt_tokens: int, elapsed_s: float, note: str = "") -> str:
    """The model reading the question and draft before it writes: how long the prompt is, and the time."""
    size = f" ({prompt_tokens:,} tokens)" if prompt_tokens else ""
    status = f"Reading the question and draft{size} with {model}… {elapsed_s:.0f} s"
    return f"{status}. {note}" if note else status


def writing_status(
    model: str, tokens: dict[int, int], limit: int, elapsed_s: float, programs: int = 1, read_s: float = 0.0
) -> str:
    """How far generation is: the programs being written (all N of a vote, whether or not each has
    its first token yet), the longest's tokens against the token limit, the time, and the time the
    prompt took to read when it was long."""
    most = "" if programs == 1 else "longest "
    read = f" (prompt read in {read_s:.0f} s)" if read_s >= 1 else ""
    return (
        f"Writing {_programs(programs)} with {model}… {most}{max(tokens.values(), default=0)} / {limit} tokens, "
        f"{elapsed_s:.0f} s{read}"
    )


def _programs_text(raw: dict[int, str], finished: dict[int, str]) -> str:
    """Every program so far, as far as written, without the model's fence lines (`streamed_program`);
    with several, each under a `# program k` header."""
    texts = {k: finished.get(k, streamed_program(text)) for k, text in raw.items()}
    if len(texts) == 1:
        return next(iter(texts.values()))
    return "\n\n".join(f"# ---- program {k + 1} ----\n{text}" for k, text in sorted(texts.items()))
