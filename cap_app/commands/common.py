"""What several commands share: the error exit, the JSONL readers of `refine` and `eval`, loading a backend.

Light at import (cap_app.cli imports every command for `--help`): heavy modules load inside the functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fail(message: object, status: int) -> int:
    """Print `error: <message>` on stderr and return the exit status: `return fail(...)` in a command."""
    print(f"error: {message}", file=sys.stderr)
    return status


def read_jsonl_items(path: str, *, draft_key: str = "draft"):
    """(line number, RefineItem, record) for good lines and (line number, None, error) for bad ones."""
    from cap_app.engine.inputs import InputError, item_from_record

    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                yield number, item_from_record(record, draft_key=draft_key), record
            except json.JSONDecodeError as error:
                yield number, None, f"not valid JSON ({error.msg})"
            except InputError as error:
                yield number, None, str(error)


def appended_records(path: Path) -> list[dict]:
    """The JSON objects an earlier run appended to `path`, so that a rerun resumes after them. A torn last line
    (the run was killed mid-write) is cut off the file; other lines that are not JSON objects are skipped."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    records = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def load_for_command(args: argparse.Namespace):
    """The generation backend the options ask for, or None after printing why it could not be loaded."""
    from cap_app.backends import BackendConfig, BackendError, get_backend
    from cap_app.commands.config_args import dataclass_from_args
    from cap_app.models.loading import ModelConfig, ModelLoadError, quiet_library_output

    quiet_library_output()
    try:
        return get_backend(dataclass_from_args(ModelConfig, args), dataclass_from_args(BackendConfig, args))
    except (ModelLoadError, BackendError, ValueError) as error:
        fail(error, 1)
        return None
