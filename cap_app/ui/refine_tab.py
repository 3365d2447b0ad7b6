"""The Refine tab's layout: question + draft -> streamed program, verdict, side-by-side view, trace,
charts. Its handlers are cap_app.ui.refine_handlers; what it renders, cap_app.ui.views and charts."""

from __future__ import annotations

import gradio as gr

from cap_app.backends.registry import AUTO_HELP
from cap_app.engine.inputs import MAX_DRAFT_CHARS, MAX_GOLD_CHARS, MAX_QUESTION_CHARS
from cap_app.engine.strategies import OVERRIDE_HELP, OVERRIDES, STRATEGIES, STRATEGY_HELP
from cap_app.ui import refine_handlers
from cap_app.ui.examples import load_examples
from cap_app.ui.hosting import CONCURRENCY_LIMIT, backend_choices, model_choices
from cap_app.ui.settings import default_settings, setting_slider
from cap_app.ui.views import TRACE_HEADERS


def build_refine_tab(demo: gr.Blocks) -> None:
    """The Refine tab's layout and wiring, inside `demo` (whose page-level events it needs none of)."""
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
                info=f"The final answer, or a worked solution ending in it; at most {MAX_GOLD_CHARS:,} characters.",
            )
            with gr.Accordion("Settings", open=False, elem_id="settings"):
                choices = model_choices()
                model = gr.Dropdown(choices, value=choices[0], label="Model", elem_id="model")
                backend = gr.Dropdown(
                    backend_choices(),
                    value="auto",
                    label="Backend",
                    elem_id="backend",
                    info=f"auto: {AUTO_HELP}",
                )
                strategy = gr.Radio(
                    list(STRATEGIES),
                    value=default_settings()["strategy"],
                    label="Strategy",
                    info=STRATEGY_HELP,
                )
                override = gr.Radio(
                    list(OVERRIDES),
                    value=default_settings()["override"],
                    label="When the program's answer differs from the draft's",
                    info=OVERRIDE_HELP,
                    elem_id="override",
                )
                n = setting_slider("n", "N (programs for vote / cot+cap)")
                temperature = setting_slider("temperature", "Temperature (vote / cot+cap sampling)")
                max_new_tokens = setting_slider("max_new_tokens", "Max new tokens", elem_id="max-new-tokens")
                time_limit = setting_slider("time_limit_s", "Time limit per program run (s)")
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
