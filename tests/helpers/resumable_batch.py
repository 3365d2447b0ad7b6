"""The batch that a lost server cuts short and a rerun resumes: set up the same way against the
scripted stub (test_openai_stub.py) and a real llama_cpp.server (test_openai_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

ITEMS = 6


def write_items(path: Path, question: str, draft: str) -> None:
    """ITEMS input records with ids 0.., each question numbered so that no two are the same item."""
    records = ({"question": f"{question} ({i})", "draft": draft, "id": i} for i in range(ITEMS))
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def refine_argv(url: str, source: Path, output: Path, *, retries: int) -> list[str]:
    """`refine` through the openai backend one item at a time, so that a lost server stops it between items."""
    return [
        "refine",
        "--backend",
        "openai",
        "--base-url",
        url,
        "--input",
        str(source),
        "--output",
        str(output),
        "--batch-size",
        "1",
        "--retries",
        str(retries),
        "--no-trace",
    ]


def written_ids(output: Path) -> list:
    """The ids of the records written so far, in the file's order."""
    return [json.loads(line)["id"] for line in output.read_text().splitlines()]
