"""What may be refined: a question, a draft and a gold answer, their limits, and the one check of them.

A RefineItem is checked when it is made (`validate_inputs`), so every way in (the page, the CLI,
the annotator's item files, the library calls) checks its input once, before anything is loaded or
generated, and shows the InputError as is; the engine takes items and never checks again. Input
files are read by one reader, `item_from_record`.
"""

from __future__ import annotations

import dataclasses
import unicodedata

from cap_app.engine.answers import MAX_ANSWER_CHARS, extract_draft_answer

MAX_QUESTION_CHARS = 4000
MAX_DRAFT_CHARS = 8000
MAX_GOLD_CHARS = MAX_DRAFT_CHARS  # a final answer, or a worked solution (GSM8K's answer field) ending in one
_ALLOWED_CONTROL = {"\n", "\r", "\t"}
GOLD_KEYS = ("gold", "ground_truth", "answer")
DRAFT_KEYS = ("draft", "6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")  # data/gsm8k's


class InputError(ValueError):
    """A question or draft that cannot be refined; the message says why, in one line."""


@dataclasses.dataclass(frozen=True)
class RefineItem:
    """A question, its draft and (optionally) its gold answer, checked: an item that exists can be refined."""

    question: str
    draft: str
    gold: str | None = None

    def __post_init__(self):
        validate_inputs(self.question, self.draft, self.gold)


def validate_inputs(question: object, draft: object, gold: object = None) -> None:
    """Raise InputError unless question and draft are text that can be refined (the draft may be
    empty) and the gold answer, when given, is text no longer than a draft: a final answer, or a
    worked solution (GSM8K's answer field) whose final answer the engine reads."""
    for name, value, limit in (("question", question, MAX_QUESTION_CHARS), ("draft", draft, MAX_DRAFT_CHARS)):
        if not isinstance(value, str):
            raise InputError(f"the {name} must be text")
        if len(value) > limit:
            raise InputError(f"the {name} is too long ({len(value):,} characters; the limit is {limit:,})")
        if any(unicodedata.category(c) in ("Cc", "Cs", "Co") and c not in _ALLOWED_CONTROL for c in value):
            raise InputError(f"the {name} contains control characters; paste plain text")
    if not question.strip():
        raise InputError("the question is empty")
    if gold is not None and (not isinstance(gold, str) or len(gold) > MAX_GOLD_CHARS):
        raise InputError(f"the gold answer must be text of at most {MAX_GOLD_CHARS:,} characters")


def item_from_record(record: object, *, draft_key: str = "draft") -> RefineItem:
    """A RefineItem from one JSONL or CSV record, the one reader of input files (the CLI's and the
    annotator's): `question`, the draft under `draft_key` (text, or an object with a `solution` as in
    data/gsm8k/model_drafts_dev.jsonl; it may be empty; `draft_key="none"` means no draft), and the
    gold answer (gold_answer). Raises InputError for a record validate_inputs would refuse."""
    if not isinstance(record, dict):
        raise InputError("expected a JSON object")
    if "question" not in record:
        raise InputError("missing 'question'")
    draft = "" if draft_key == "none" else record.get(draft_key)
    if isinstance(draft, dict):
        draft = draft.get("solution")
    if draft is None:
        others = sorted(
            k
            for k, v in record.items()
            if k != draft_key and (k in DRAFT_KEYS or isinstance(v, dict) and "solution" in v)
        )
        hint = f" (drafts in this record: {', '.join(others)}; choose one as the draft key)" if others else ""
        raise InputError(f"missing '{draft_key}'{hint}")
    return RefineItem(record["question"], draft, gold_answer(record))


def gold_answer(record: dict) -> str | None:
    """The gold answer of a record: the first of GOLD_KEYS holding a number or non-blank text; from
    text, its final answer (`#### 18`, `A: 18`), else the text itself, cut at MAX_ANSWER_CHARS."""
    for key in GOLD_KEYS:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value.strip():
            return extract_draft_answer(value) or value.strip()[:MAX_ANSWER_CHARS]
    return None
