"""What the benchmarks share: where the GSM8K files are, and how each writes its figures."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT / "data" / "gsm8k"
TRAIN = GSM8K / "train.jsonl"
DRAFTS_DEV = GSM8K / "model_drafts_dev.jsonl"


def write_json(path: str | Path, figures: dict) -> None:
    """The figures as indented JSON at `path`, its folder made first: the record a run leaves."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
