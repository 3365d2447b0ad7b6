"""CaP Refinery web app: what `python app.py`, `make run` and a Hugging Face Space run.

Serves on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (default 127.0.0.1:7860) with the model named
by $CAP_MODEL (default: the offline SmolLM2-135M + CaP adapter). `demo` is built at import so
tests and `gradio app.py` (hot reload) can use it; it is launched only when run as a script.
"""

from cap_app.ui.app import build_demo, launch

demo = build_demo()

if __name__ == "__main__":
    launch(demo)
