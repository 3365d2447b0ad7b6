"""CaP Refinery web app: what `python app.py`, `make run` and a Hugging Face Space run.

Serves on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (default 127.0.0.1:7860) with the model named
by $CAP_MODEL (default: the offline SmolLM2-135M + CaP adapter), prepared in the background from
the start. On a Space with persistent storage (/data) the caches and the annotation database live
there. SIGTERM and SIGINT stop it within seconds, as PID 1 too. `demo` is built at import so
tests and `gradio app.py` (hot reload) can use it; it is launched only when run as a script.
"""

from cap_app.storage import use_persistent_storage

use_persistent_storage()  # before huggingface_hub is imported: it reads $HF_HOME once

from cap_app.ui.app import build_demo, launch  # noqa: E402

demo = build_demo()

if __name__ == "__main__":
    launch(demo)
