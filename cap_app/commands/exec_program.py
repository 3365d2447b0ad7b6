"""`python -m cap_app exec FILE`: run a program in the sandbox and show what it did.

    python -m cap_app exec program.py              # readable summary
    python -m cap_app exec program.py --json       # one JSON object: ExecResult.to_dict() and "walls"
    echo 'print(6 * 7)' | python -m cap_app exec - --no-trace

Exit status: 0 when the program ran to completion (status "ok"), 1 when it failed, was
rejected or hit a limit, 2 when the file or the settings are unusable. "walls" in the JSON
names the process walls around the program (see cap_app/sandbox/walls.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from cap_app.commands.common import fail
from cap_app.commands.config_args import add_dataclass_arguments, dataclass_from_args
from cap_app.sandbox.config import SandboxConfig

HELP = "Run a Python program in the restricted sandbox and print its result, answer and trace."
MAX_FILE_BYTES = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the program file, or - to read it from stdin")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_dataclass_arguments(parser, SandboxConfig)


def read_program(path: str) -> str:
    """The program's text; ValueError with a readable message when it cannot be read."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


def format_summary(result) -> str:
    """A human-readable view of an ExecResult."""
    lines = [f"status: {result.status} ({result.duration_ms:.1f} ms)"]
    if result.answer is not None:
        lines.append(f"answer: {result.answer}")
    if result.error:
        lines.append(f"error: {result.error}")
    if result.stdout:
        lines.append("stdout:" + (" (truncated)" if result.stdout_truncated else ""))
        lines.extend("  " + line for line in result.stdout.splitlines())
    if result.trace:
        more = ", truncated" if result.trace_truncated else ""
        lines.append(f"trace ({len(result.trace)} steps{more}):")
        width = max(len(step.source) for step in result.trace[:200])
        for step in result.trace:
            changed = "  ".join(f"{name}={value}" for name, value in step.changed.items())
            lines.append(f"  {step.line:>4} | {step.source:<{min(width, 60)}}  {changed}".rstrip())
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from cap_app.sandbox import run_program, sandbox_walls

    try:
        config = dataclass_from_args(SandboxConfig, args)
        code = read_program(args.file)
    except (ValueError, TypeError) as exc:
        return fail(exc, 2)
    result = run_program(code, **dataclasses.asdict(config))
    if args.json:
        print(json.dumps({**result.to_dict(), "walls": list(sandbox_walls())}, ensure_ascii=False))
    else:
        print(format_summary(result))
    return 0 if result.ok else 1
