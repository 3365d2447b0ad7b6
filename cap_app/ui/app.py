"""The Gradio page: a Refine tab (question + draft -> streamed program, verdict, side-by-side view,
trace, charts) and the annotator's tab when that module is present. Layout only: the handlers
live in cap_app.ui.refine_handlers, the rendering in cap_app.ui.views / cap_app.ui.charts.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import gradio as gr

from cap_app.engine.refine import MAX_DRAFT_CHARS, MAX_QUESTION_CHARS, OVERRIDES, STRATEGIES
from cap_app.sandbox import sandbox_walls
from cap_app.sandbox.walls import describe as describe_walls
from cap_app.ui import refine_handlers, stopping
from cap_app.ui.examples import load_examples
from cap_app.ui.hosting import (
    CONCURRENCY_LIMIT,
    QUEUE_SIZE,
    backend_choices,
    model_choices,
    wrap_generation_for_zero_gpu,
)
from cap_app.ui.views import TRACE_HEADERS

TITLE = "CaP Refinery"
INTRO = (
    "Paste a math question and a chain-of-thought answer (the *draft*, perhaps wrong). A CaP model "
    "re-solves it as a Python program, the program runs in a restricted sandbox, and the page shows "
    "where the draft went wrong. Method: [Teaching LLMs to Refine with Tools](https://arxiv.org/abs/2412.16871)."
)


def _refine_tab() -> None:
    with gr.Row():
        with gr.Column(scale=1):
            # No max_length on these three: the browser would cut a long paste silently. The limits
            # are stated here and enforced by the handler, which refuses and says why.
            question = gr.Textbox(
                label="Question", lines=4, info=f"At most {MAX_QUESTION_CHARS:,} characters.", elem_id="question"
            )
            draft = gr.Textbox(
                label="Draft answer (chain of thought)",
                lines=6,
                info=f"At most {MAX_DRAFT_CHARS:,} characters.",
                elem_id="draft",
            )
            gold = gr.Textbox(
                label="Gold answer (optional)",
                max_lines=1,
                elem_id="gold",
                info=f"At most {refine_handlers.MAX_GOLD_CHARS} characters.",
            )
            with gr.Accordion("Settings", open=False, elem_id="settings"):
                choices = model_choices()
                model = gr.Dropdown(choices, value=choices[0], label="Model", elem_id="model")
                backend = gr.Dropdown(
                    backend_choices(),
                    value="auto",
                    label="Backend",
                    elem_id="backend",
                    info="auto: llama.cpp for a GGUF model on a CPU (fast), else transformers",
                )
                strategy = gr.Radio(
                    list(STRATEGIES),
                    value=refine_handlers.default_settings()["strategy"],
                    label="Strategy",
                    info="vote / cot+cap sample N programs; repair feeds errors back",
                )
                override = gr.Radio(
                    list(OVERRIDES),
                    value=refine_handlers.default_settings()["override"],
                    label="When the program's answer differs from the draft's",
                    info="located: it replaces the draft's only where the program shows the draft's mistake "
                    "(a wrong calculation, a left-out quantity); always: it replaces it (the paper's CaP)",
                    elem_id="override",
                )
                n = refine_handlers.setting_slider("n", "N (programs for vote / cot+cap)")
                temperature = refine_handlers.setting_slider("temperature", "Temperature (vote / cot+cap sampling)")
                max_new_tokens = refine_handlers.setting_slider(
                    "max_new_tokens", "Max new tokens", elem_id="max-new-tokens"
                )
                time_limit = refine_handlers.setting_slider("time_limit_s", "Time limit per program run (s)")
            with gr.Row():
                refine = gr.Button("Refine", variant="primary", elem_id="refine")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            status = gr.Markdown(elem_id="status")
        with gr.Column(scale=1):
            code = gr.Code(
                label="Program (streamed as it is written)", language="python", interactive=False, elem_id="program"
            )
            verdict = gr.HTML(elem_id="verdict")
    examples = load_examples()
    if examples:
        gr.Examples(
            [[e.question, e.draft, e.gold] for e in examples],
            inputs=[question, draft, gold],
            example_labels=[e.label for e in examples],
            label="Real GSM8K test questions with GPT-3 drafts",
            cache_examples=False,
            examples_per_page=len(examples),
        )
    gr.Markdown(
        "### Draft vs program\nEach draft step beside the program line computing the same thing; "
        "the draft's arithmetic is re-checked and each line shows the value it produced."
    )
    side_by_side = gr.HTML(label="Draft vs program", elem_id="side-by-side")
    with gr.Accordion("Execution trace and output", open=True):
        with gr.Row():
            trace = gr.Dataframe(
                headers=TRACE_HEADERS,
                label="Trace (line, code, variables changed)",
                interactive=False,
                wrap=True,
                elem_id="trace",
            )
            stdout = gr.Textbox(label="Printed output and errors", lines=6, interactive=False, elem_id="stdout")
    with gr.Row():
        votes = gr.Plot(label="Answer votes", elem_id="votes-plot")
        times = gr.Plot(label="Time per stage", elem_id="times-plot")
        candidates = gr.Plot(label="Programs", elem_id="candidates-plot", visible=False)

    outputs = {
        "status": status,
        "code": code,
        "verdict": verdict,
        "side_by_side": side_by_side,
        "trace": trace,
        "stdout": stdout,
        "votes": votes,
        "times": times,
        "candidates": candidates,
    }
    inputs = [question, draft, gold, model, strategy, n, temperature, max_new_tokens, time_limit, backend, override]
    gr.on(
        [refine.click, gold.submit],
        refine_handlers.refine_page,
        inputs,
        [outputs[name] for name in refine_handlers.OUTPUTS],
        api_name="refine",
        concurrency_limit=CONCURRENCY_LIMIT,
        concurrency_id="generation",
    )
    stop.click(refine_handlers.stop_refinement, None, status, api_name="stop", queue=False)


def build_demo() -> gr.Blocks:
    """The whole app (not launched): the Refine tab and, when available, the Annotate tab."""
    wrap_generation_for_zero_gpu()
    # No usage analytics: the demo may run where the network is closed, and visitors are not tracked.
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tab("Refine"):
            _refine_tab()
        if importlib.util.find_spec("cap_app.ui.annotate_tab") is not None:
            from cap_app.ui.annotate_tab import build_annotator_tab

            with gr.Tab("Annotate"):
                build_annotator_tab(demo)
        gr.Markdown(f"<small>{describe_walls(sandbox_walls())}</small>", elem_id="sandbox-walls")
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY_LIMIT)
    return demo


def prepare_default_model():
    """Start loading the page's first model choice on the default backend, in the background, with
    the very settings a visitor's first Refine asks for, so that request joins this load
    (cap_app.backends.preparation); off with CAP_PREPARE=0."""
    from cap_app.backends import preparation

    if os.environ.get("CAP_PREPARE", "1") == "0":
        return None
    return preparation.start(refine_handlers.model_config(model_choices()[0]), refine_handlers.backend_config("auto"))


def _accounts(host: str):
    """Who may annotate depends on where the app listens; with a users file ($CAP_USERS) Gradio's own
    login checks each account (cap_app.annotate.accounts)."""
    from cap_app.annotate import accounts

    accounts.set_bind_host(host)
    return accounts.gradio_auth()


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, **kwargs) -> None:
    """Serve on host:port, defaulting to $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (127.0.0.1:7860),
    preparing the model meanwhile; SIGTERM and SIGINT stop it cleanly (cap_app.ui.stopping)."""
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = port or int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    stopping.install()
    prepare_default_model()
    print(describe_walls(sandbox_walls()), file=sys.stderr, flush=True)  # the log says what holds programs in
    blocking = not kwargs.get("prevent_thread_lock", False)
    kwargs["prevent_thread_lock"] = True  # the wait is stopping.serve_until_stopped's, below
    try:
        demo.launch(server_name=host, server_port=port, show_error=False, auth=_accounts(host), **kwargs)
        if blocking:
            stopping.serve_until_stopped(demo)
    except KeyboardInterrupt:  # a stop signal before the server's own loop was there to take it
        pass
