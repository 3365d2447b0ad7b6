"""The Gradio page: its tabs, built and launched. Each tab is a layout module (`build_*_tab(demo)`)
beside its handlers module; a new tab is those two modules and one line in TABS.
"""

from __future__ import annotations

import os
import sys

import gradio as gr

from cap_app.sandbox import sandbox_walls
from cap_app.sandbox.walls import describe as describe_walls
from cap_app.ui import stopping
from cap_app.ui.annotate_tab import build_annotate_tab
from cap_app.ui.hosting import CONCURRENCY_LIMIT, QUEUE_SIZE, model_choices, wrap_generation_for_zero_gpu
from cap_app.ui.refine_tab import build_refine_tab
from cap_app.ui.settings import backend_config, model_config

TITLE = "CaP Refinery"
INTRO = (
    "Paste a math question and a chain-of-thought answer (the *draft*, perhaps wrong). A CaP model "
    "re-solves it as a Python program, the program runs in a restricted sandbox, and the page shows "
    "where the draft went wrong. Method: [Teaching LLMs to Refine with Tools](https://arxiv.org/abs/2412.16871)."
)
TABS = (("Refine", build_refine_tab), ("Annotate", build_annotate_tab))


def build_demo() -> gr.Blocks:
    """The whole app (not launched): its tabs, and the sandbox's walls under them."""
    wrap_generation_for_zero_gpu()
    # No usage analytics: the demo may run where the network is closed, and visitors are not tracked.
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        for label, build_tab in TABS:
            with gr.Tab(label):
                build_tab(demo)
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
    return preparation.start(model_config(model_choices()[0]), backend_config("auto"))


def resume_batch_refinements() -> list[int]:
    """Go on with the batch refinements (Refine all) that a stopped or killed server left running,
    with their stored settings: the ids of their batches (cap_app.annotate.batch_refinement)."""
    from cap_app.annotate import batch_refinement
    from cap_app.annotate.store import Store, StoreError

    try:
        return batch_refinement.resume_interrupted(Store())
    except StoreError as error:  # the Annotate tab shows the same error; the Refine tab still serves
        print(f"Batch refinements not resumed: {error}", file=sys.stderr, flush=True)
        return []


def _accounts(host: str):
    """Who may annotate depends on where the app listens; with a users file ($CAP_USERS) Gradio's own
    login checks each account (cap_app.annotate.accounts)."""
    from cap_app.annotate import accounts

    accounts.set_bind_host(host)
    return accounts.gradio_auth()


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, **kwargs) -> None:
    """Serve on host:port, defaulting to $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (127.0.0.1:7860),
    preparing the model and resuming interrupted batch refinements meanwhile; SIGTERM and SIGINT stop
    it cleanly (cap_app.ui.stopping)."""
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = port or int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    stopping.install()
    prepare_default_model()
    resume_batch_refinements()
    print(describe_walls(sandbox_walls()), file=sys.stderr, flush=True)  # the log says what holds programs in
    blocking = not kwargs.get("prevent_thread_lock", False)
    kwargs["prevent_thread_lock"] = True  # the wait is stopping.serve_until_stopped's, below
    try:
        demo.launch(server_name=host, server_port=port, show_error=False, auth=_accounts(host), **kwargs)
        if blocking:
            stopping.serve_until_stopped(demo)
    except KeyboardInterrupt:  # a stop signal before the server's own loop was there to take it
        pass
