"""The `python -m cap_app` command line: one sub-command per module in cap_app.commands.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `main(args) -> int`,
and keeps heavy imports (torch, transformers, gradio) inside `main` so `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "exec": "cap_app.commands.exec_program",
    "refine": "cap_app.commands.refine",
    "eval": "cap_app.commands.evaluate",
    "serve": "cap_app.commands.serve",
    "prepare": "cap_app.commands.prepare",
    "export": "cap_app.commands.export",
    "users": "cap_app.commands.users",
    "gguf": "cap_app.commands.gguf",
    "data": "cap_app.commands.data",
    "train": "cap_app.commands.train",
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cap_app",
        description="CaP Refinery: refine chain-of-thought math answers with programs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
