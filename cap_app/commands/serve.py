"""Serve the web app (the same page as `python app.py`)."""

from __future__ import annotations

import argparse
import os

HELP = "serve the CaP Refinery web app (same as `python app.py`)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument(
        "--model",
        default=None,
        help="Hub id, local folder or .gguf file to serve (default: $CAP_MODEL, else the offline default)",
    )
    parser.add_argument(
        "--db",
        default=None,
        help="annotation database file (default: $CAP_DB_PATH, else /data/annotations.db on a "
        "Space with persistent storage, else ./annotations.db)",
    )


def main(args: argparse.Namespace) -> int:
    if args.model:
        os.environ["CAP_MODEL"] = args.model  # read by the page's model choice and the engine
    if args.db:
        os.environ["CAP_DB_PATH"] = args.db  # read by the annotation store when the page opens it
    from cap_app.storage import use_persistent_storage

    use_persistent_storage()  # before huggingface_hub is imported: it reads $HF_HOME once
    from cap_app.ui.app import build_demo, launch

    launch(build_demo(), args.host, args.port)
    return 0
