"""The demo's clickable examples: real GSM8K test questions with real GPT-3 drafts (examples/)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

EXAMPLES_PATH = Path(__file__).resolve().parents[2] / "examples" / "examples.jsonl"


@dataclasses.dataclass
class Example:
    id: str
    question: str
    draft: str
    gold: str
    draft_model: str  # which GPT-3 model wrote the draft
    draft_correct: bool

    @property
    def label(self) -> str:
        """Short text shown on the example button."""
        words = self.question.split()
        start = " ".join(words[:6]) + ("…" if len(words) > 6 else "")
        return f"{start} · {self.draft_model} · {'right' if self.draft_correct else 'wrong'} draft"


def load_examples(path: Path = EXAMPLES_PATH) -> list[Example]:
    """Examples from a JSONL file; an empty list when the file is not there (e.g. a bare install)."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [Example(**json.loads(line)) for line in f if line.strip()]
