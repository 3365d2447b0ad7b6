"""Event handlers of the Refine tab: plain functions, importable and testable without a browser.

They hold no refinement logic: `refine_page` builds the same RefineConfig the CLI builds, calls
the engine's `refine_stream`, and turns its events into page values (views, alignment, charts).
Each yield is a full tuple in the order of `OUTPUTS`; `gr.skip()` leaves a component as it is.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

import gradio as gr

from cap_app.charts import candidates_figure, stage_times_figure, votes_figure
from cap_app.refine import RefineConfig
from cap_app.ui import views
from cap_app.ui.hosting import DEFAULT_MODEL_CHOICE, WEB_LIMITS, WEB_STEPS, backend_choices, model_choices

OUTPUTS = ("status", "code", "verdict", "side_by_side", "trace", "stdout", "votes", "times", "candidates")
MAX_GOLD_CHARS = 100  # a final answer, not an essay
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


def model_config(choice: str):
    """The ModelConfig for a model picked in a page; only the operator's choices are accepted."""
    from cap_app.model import ModelConfig

    if choice not in model_choices():
        raise ValueError(f"unknown model {choice!r}; this server offers: {', '.join(model_choices())}")
    return ModelConfig(model=None if choice == DEFAULT_MODEL_CHOICE else choice)


def backend_config(choice: str):
    """The BackendConfig for a backend picked in a page: only the offered ones, and the operator's server."""
    from cap_app.backends import BackendConfig

    if choice not in backend_choices():
        raise ValueError(f"unknown backend {choice!r}; this server offers: {', '.join(backend_choices())}")
    base_url = os.environ.get("CAP_BASE_URL") if choice in ("auto", "openai") else None
    return BackendConfig(backend=choice, base_url=base_url)


def refine_config(
    strategy: str, n: float, temperature: float, max_new_tokens: float, time_limit_s: float, override: str = "located"
):
    """The settings panel as the engine's RefineConfig (which checks its own ranges, as for the CLI),
    within the bounds a public server grants one visitor (the API can send any number)."""
    for name, value in (
        ("n", n),
        ("temperature", temperature),
        ("max_new_tokens", max_new_tokens),
        ("time_limit_s", time_limit_s),
    ):
        low, high = WEB_LIMITS[name]
        if not low <= float(value) <= high:
            raise ValueError(f"{name} must be between {low} and {high} on this server")
    return RefineConfig(
        strategy=strategy,
        n=int(n),
        temperature=float(temperature),
        max_new_tokens=int(max_new_tokens),
        timeout_s=float(time_limit_s),
        override=override,
    )


def default_settings() -> dict:
    """`refine_config`'s arguments at RefineConfig's defaults: every page starts where the CLI does,
    so a page refines as the CLI and the evaluations do."""
    config = RefineConfig()
    return {
        "strategy": config.strategy,
        "n": config.n,
        "temperature": config.temperature,
        "max_new_tokens": config.max_new_tokens,
        "time_limit_s": config.timeout_s,
        "override": config.override,
    }


def setting_slider(name: str, label: str, **kwargs) -> gr.Slider:
    """The slider for setting `name`: the range a visitor is granted, starting at the default."""
    return gr.Slider(*WEB_LIMITS[name], value=default_settings()[name], step=WEB_STEPS[name], label=label, **kwargs)


def shown_program(program: str, raw_text: str) -> str:
    """The program, or, when none could be pulled out, the model's reply as comments (so it is visible)."""
    if program.strip():
        return program
    comments = ("# " + line for line in raw_text.splitlines())
    return "\n".join(["# No Python program found in the model's reply:", *comments])


def result_frame(result, status: str) -> tuple:
    """Every view of a finished refinement."""
    shown = result.shown_candidate
    many = len(result.candidates) > 1
    return _frame(
        status=status,
        code=shown_program(shown.program, shown.text) if shown else "",
        verdict=views.verdict_html(result),
        side_by_side=views.render_side_by_side(result),
        trace=views.trace_table(result),
        stdout=views.execution_text(result),
        votes=votes_figure(result),
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
    from cap_app.refine import InputError, validate_inputs

    try:
        validate_inputs(question, draft)
        if gold is not None and (not isinstance(gold, str) or len(gold) > MAX_GOLD_CHARS):
            raise InputError(f"the gold answer must be text of at most {MAX_GOLD_CHARS} characters")
        config = refine_config(strategy, n, temperature, max_new_tokens, time_limit_s, override)
        model_cfg = model_config(model_choice)
        backend_cfg = backend_config(backend_choice)
    except (InputError, ValueError, TypeError) as error:
        yield _cleared("", views.message_html(f"Cannot refine: {error}", "warning"))
        return
    cancel = _cancel_event(request)
    try:
        yield from _run_refinement(question, draft, gold, config, model_cfg, backend_cfg, cancel)
    except Exception as error:  # an engine failure must reach the visitor as a message, not a traceback
        logger.exception("refinement failed")
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        yield _frame(status="", verdict=views.message_html(f"The refinement failed: {detail}", "error"))
    finally:
        cancel.set()  # stops generation when the visitor went away mid-stream
        _forget_cancel_event(request, cancel)


def _run_refinement(question, draft, gold, config, model_cfg, backend_cfg, cancel: threading.Event) -> Iterator[tuple]:
    from cap_app import preparation
    from cap_app.backends import BackendError
    from cap_app.model import ModelLoadError
    from cap_app.refine import refine_stream

    loading = preparation.load(model_cfg, backend_cfg)  # joins the app's own preparation while it runs
    yield _cleared(loading.status())
    while not loading.done.wait(PREPARATION_TICK_S):
        if cancel.is_set():
            yield _frame(status="Stopped.")
            return
        yield _frame(status=loading.status())
    try:
        model = loading.result()
    except (ModelLoadError, BackendError) as error:
        yield _frame(status="", verdict=views.message_html(f"The model could not be loaded: {error}", "error"))
        return
    yield _frame(status=f"Writing a program with {model.description}…")
    gold = (gold or "").strip() or None
    last_update, written, tokens, began = 0.0, {}, {}, time.monotonic()
    for event in refine_stream(question, draft, gold=gold, config=config, model=model, cancel=cancel):
        if event.kind == "token":
            written[event.candidate] = written.get(event.candidate, "") + event.text
            tokens[event.candidate] = event.tokens
            if time.monotonic() - last_update >= STREAM_INTERVAL_S:
                last_update = time.monotonic()
                yield _frame(
                    code=_programs_text(written),
                    status=writing_status(model.description, tokens, config.max_new_tokens, time.monotonic() - began),
                )
        elif event.kind == "program":
            written[event.candidate] = shown_program(event.text, written.get(event.candidate, ""))
            yield _frame(code=_programs_text(written), status=f"Running program {event.candidate + 1} in the sandbox…")
        elif event.kind == "executed":
            outcome = event.execution.answer if event.execution.ok else event.execution.error
            yield _frame(status=f"Program {event.candidate + 1}: {event.execution.status} ({outcome}).")
        elif event.kind == "done":
            yield result_frame(event.result, "Done.")
            return
    # the engine ends the stream without a result only when it was cancelled
    yield _frame(code=_programs_text(written), status="Stopped." if cancel.is_set() else "No result.")


def writing_status(model: str, tokens: dict[int, int], limit: int, elapsed_s: float) -> str:
    """How far generation is: tokens written against the "Max new tokens" limit, and the time."""
    what = "a program" if len(tokens) == 1 else f"{len(tokens)} programs"
    most = "" if len(tokens) == 1 else "longest "
    return f"Writing {what} with {model}… {most}{max(tokens.values(), default=0)} / {limit} tokens, {elapsed_s:.0f} s"


def _programs_text(written: dict[int, str]) -> str:
    """The text of every program so far; with several, each under a `# program k` header."""
    if len(written) == 1:
        return next(iter(written.values()))
    return "\n\n".join(f"# ---- program {k + 1} ----\n{text}" for k, text in sorted(written.items()))
