"""One reading of a RefinementResult: every judgement a view shows about it, made once.

A result holds what happened (the answers, the programs, their runs); a reader also wants to know
which answers are right, which agree, and where the draft and the program part. Those comparisons
(math equivalence, the draft-to-program alignment) cost time and must say the same thing on every
tab, so they are made here, once per result, and the Refine and Annotate tabs render from the
Reading (cap_app.ui.views, cap_app.ui.charts) without deciding anything themselves.
"""

from __future__ import annotations

import dataclasses

from cap_app.engine.align import Alignment, DraftStep, align_draft_to_program
from cap_app.engine.answers import answers_equal
from cap_app.engine.results import RefinementResult


@dataclasses.dataclass(frozen=True)
class VotedAnswer:
    """One distinct answer of the programs and how it compares."""

    answer: str
    votes: int
    same_as_draft: bool
    right: bool | None  # against the gold answer; None without one
    chosen: bool  # it is the refined answer


@dataclasses.dataclass(frozen=True)
class Reading:
    """A result with its correctness marks and its alignment."""

    result: RefinementResult
    program_right: bool | None  # the program's answer against the gold answer; None without one
    draft_matches_refined: bool  # the draft's answer is the refined one (the draft's mark without a gold answer)
    voted: list[VotedAnswer]  # most votes first
    alignment: Alignment  # the draft's steps beside the shown program's lines

    @property
    def draft_steps(self) -> list[DraftStep]:
        """The draft's steps, numbered as "first wrong step" counts them."""
        return [row.step for row in self.alignment.rows if row.step is not None]


def read_result(result: RefinementResult) -> Reading:
    """The Reading of `result`: compute once per result, render as often as needed."""
    shown = result.shown_candidate
    alignment = align_draft_to_program(
        result.draft, shown.program if shown else "", shown.execution if shown else None, result.question
    )
    gold = result.gold

    def right(answer: str | None) -> bool | None:
        return None if gold is None else answers_equal(answer, gold)

    voted = [
        VotedAnswer(
            answer,
            count,
            answers_equal(answer, result.draft_answer),
            right(answer),
            answers_equal(answer, result.refined_answer),
        )
        for answer, count in sorted(result.votes.items(), key=lambda kv: -kv[1])
    ]
    return Reading(
        result=result,
        program_right=right(result.program_answer),
        draft_matches_refined=answers_equal(result.draft_answer, result.refined_answer),
        voted=voted,
        alignment=alignment,
    )
