"""Hand-made refinement results (the shapes the engine produces) for the rendering tests."""

from __future__ import annotations

import pytest

from cap_app.engine.results import Candidate, RefinementResult
from cap_app.sandbox.result import ExecResult, TraceStep

JANET_QUESTION = (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. "
    "How much in dollars does she make every day at the farmers' market?"
)
# the real 6b_finetuning draft for GSM8K test question 0: drops the 4 muffin eggs
JANET_DRAFT = (
    "Janet eats 3 ducks eggs for breakfast every morning and she sells the rest so she has 16 - 3 = <<16-3=13>>13 "
    "ducks eggs left\nShe has 13 ducks eggs and she sells 2 each day so she makes 13 * 2 = $<<13*2=26>>26\nA: 26"
)
JANET_PROGRAM = (
    "eggs = 16\nbreakfast = 3\nmuffins = 4\nleft = eggs - breakfast - muffins\nmoney = left * 2\nprint(money)"
)


def janet_execution() -> ExecResult:
    trace = [
        TraceStep(1, "eggs = 16", {"eggs": "16"}),
        TraceStep(2, "breakfast = 3", {"breakfast": "3"}),
        TraceStep(3, "muffins = 4", {"muffins": "4"}),
        TraceStep(4, "left = eggs - breakfast - muffins", {"left": "9"}),
        TraceStep(5, "money = left * 2", {"money": "18"}),
        TraceStep(6, "print(money)", {}),
    ]
    return ExecResult("ok", stdout="18\n", answer="18", trace=trace, duration_ms=12.0)


def make_result(
    *,
    draft=JANET_DRAFT,
    question=JANET_QUESTION,
    candidates=None,
    chosen=0,
    gold="18",
    votes=None,
    refined="18",
    verdict="disagrees",
    strategy="greedy",
) -> RefinementResult:
    if candidates is None:
        candidates = [
            Candidate(
                text="```python\n" + JANET_PROGRAM + "\n```",
                program=JANET_PROGRAM,
                execution=janet_execution(),
                answer="18",
                tokens=40,
            )
        ]
    return RefinementResult(
        question=question,
        draft=draft,
        draft_answer="26",
        strategy=strategy,
        candidates=candidates,
        chosen=chosen,
        refined_answer=refined,
        votes={"18": 1} if votes is None else votes,
        verdict=verdict,
        gold=gold,
        draft_correct=False if gold else None,
        refined_correct=(refined == gold) if gold else None,
        timings_ms={"prompt": 4.0, "generate": 1500.0, "execute": 12.0},
        generated_tokens=40,
        model="test",
    )


@pytest.fixture
def janet_result() -> RefinementResult:
    return make_result()
