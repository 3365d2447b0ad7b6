"""Draft/program alignment, arithmetic checks, dropped quantities and diffs."""

from __future__ import annotations

import json

from cap_app.engine.align import (
    align_draft_to_program,
    line_diff,
    located_mistake,
    split_draft,
    token_diff,
    unfollowed_answer,
)
from cap_app.sandbox import run_program
from cap_app.sandbox.result import ExecResult, TraceStep
from tests.helpers.paths import DRAFTS_DEV
from tests.ui.conftest import JANET_DRAFT, JANET_PROGRAM, JANET_QUESTION, janet_execution

WRONG_ARITHMETIC_DRAFT = "She eats 3 + 4 = <<3+4=7>>7 meals\nThe ducks lay 16 * 7 = <<16*7=111>>111 eggs\nA: 111"
DRAFT_KEYS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def test_split_draft_removes_annotations_and_rechecks_each_equation():
    steps = split_draft(JANET_DRAFT)
    assert [s.text for s in steps][-1] == "A: 26"
    assert steps[-1].is_answer
    assert "<<" not in steps[0].text and "16 - 3 = 13" in steps[0].text
    assert [(c.expression, c.claimed, c.ok) for c in steps[0].checks] == [("16 - 3", "13", True)]
    assert [(c.expression, c.claimed, c.ok) for c in steps[1].checks] == [("13 * 2", "26", True)]


def test_wrong_arithmetic_is_flagged_with_the_true_value():
    steps = split_draft(WRONG_ARITHMETIC_DRAFT)
    check = steps[1].checks[0]
    assert (check.expression, check.claimed, check.ok, check.actual) == ("16 * 7", "111", False, 112.0)
    assert steps[0].checks[0].ok is True


def test_annotation_without_prose_equation_is_still_checked():
    (step,) = split_draft("So she has <<20-5=14>>14 apples")
    assert [(c.expression, c.claimed, c.ok) for c in step.checks] == [("20-5", "14", False)]


def test_rounded_results_pass_and_sentences_become_steps():
    steps = split_draft("Each gets 10 / 3 = 3.33 cups. Then 2 x 4 = 8 and 50% * 8 = 4.")
    assert len(steps) == 2
    assert [c.ok for c in steps[0].checks] == [True]
    assert [c.ok for c in steps[1].checks] == [True, True]


def test_percentages_leading_decimals_and_partial_equations():
    (step,) = split_draft("He saves .20*20 = $4.00, then 5% * 100% = 5% and 20 * 50% = 10")
    assert [(c.expression, c.ok) for c in step.checks] == [(".20*20", True), ("5% * 100%", True), ("20 * 50%", True)]
    (step,) = split_draft("In three years * (1/3) = 9 years")  # only "(1/3) = 9" is an equation: not judged
    assert step.checks == []
    # a percent sign that is only a unit, and a right-hand side that is a calculation: neither is a slip
    # (both were flagged, and a program that misread those right drafts overruled them)
    (step,) = split_draft("Therefore, 25/100 x 100 = 25% of the plants flower, and 3/4 = 75% do not.")
    assert [(c.expression, c.ok) for c in step.checks] == [("25/100 x 100", True), ("3/4", True)]
    (step,) = split_draft("Gerald and Julia received $100/ 3 + $100/2 = $100/5")
    assert step.checks == []
    (step,) = split_draft("So 20 - 5 = 15 - 3 = 12 and 2 * 500 = 1,000.")
    assert [(c.expression, c.claimed, c.ok) for c in step.checks] == [
        ("20 - 5", "15", True),
        ("2 * 500", "1,000", True),
    ]


def test_real_gpt3_drafts_are_rechecked_and_their_slips_found():
    rows = [json.loads(line) for line in DRAFTS_DEV.open()]
    drafts = [row[key]["solution"] for row in rows for key in DRAFT_KEYS]
    checks = [c for draft in drafts for step in split_draft(draft) for c in step.checks]
    assert len(checks) > 2000
    assert sum(c.ok is None for c in checks) / len(checks) < 0.01  # nearly every equation is re-computed
    slips = {(c.expression, c.claimed) for c in checks if c.ok is False}
    assert ("200 / 3", "66") in slips and ("5 - 8", "3") in slips  # real GPT-3 arithmetic slips


def test_janet_alignment_matches_steps_to_lines_and_finds_the_dropped_muffin_eggs():
    alignment = align_draft_to_program(JANET_DRAFT, JANET_PROGRAM, janet_execution(), JANET_QUESTION)
    pairs = [(r.step.index if r.step else None, r.line.number if r.line else None, r.match) for r in alignment.rows]
    # lines 1-3 only name quantities; step 0 (16 - 3) is line 4, step 1 (13 * 2) line 5, "A: 26" the print
    assert pairs == [
        (None, 1, None),
        (None, 2, None),
        (None, 3, None),
        (0, 4, "quantities"),
        (1, 5, "quantities"),
        (2, 6, "answer"),
    ]
    step0 = alignment.rows[3]
    assert step0.line.evaluated == "16 - 3 - 4"
    assert step0.diff() == [("equal", "16 - 3"), ("insert", "- 4")]
    assert step0.line.values == {"left": "9"}
    assert alignment.rows[5].line.printed == "18"
    assert [(d.value, d.lines) for d in alignment.dropped] == [(4.0, [3])]
    assert "four" in alignment.dropped[0].context


def test_steps_match_lines_by_value_before_quantities():
    program = "a = 3 + 4\nb = 16 * a\nprint(b)"
    trace = ExecResult(
        "ok",
        stdout="112\n",
        answer="112",
        trace=[
            TraceStep(1, "a = 3 + 4", {"a": "7"}),
            TraceStep(2, "b = 16 * a", {"b": "112"}),
            TraceStep(3, "print(b)", {}),
        ],
    )
    rows = align_draft_to_program(WRONG_ARITHMETIC_DRAFT, program, trace).rows
    assert [(r.step.index, r.line.number, r.match) for r in rows] == [
        (0, 1, "value"),
        (1, 2, "quantities"),
        (2, 3, "answer"),
    ]
    assert rows[1].diff() == [("equal", "16 * 7")]


def test_chinese_drafts_split_at_full_stops_and_match_only_numbers_they_state():
    draft = "小明有8个苹果，吃了2个，8-2=6。又买了5个，6+5=11。\n答案：11"
    program = "apples = 5\neaten = 2\nstart = 8\nleft = start - eaten\ntotal = left + apples\nprint(total)"
    trace = ExecResult(
        "ok",
        stdout="11\n",
        answer="11",
        trace=[
            TraceStep(n, line, {line.split(" = ")[0]: value})
            for n, (line, value) in enumerate(zip(program.splitlines(), ["5", "2", "8", "6", "11"], strict=False), 1)
        ]
        + [TraceStep(6, "print(total)", {})],
    )
    steps = split_draft(draft)
    assert [s.numbers for s in steps] == [[8, 2, 8, 2, 6], [5, 6, 5, 11], [11]]  # "有8个": 8 after a Han character
    assert steps[2].is_answer
    rows = align_draft_to_program(draft, program, trace).rows
    assert [(r.step.index if r.step else None, r.line.number, r.match) for r in rows] == [
        (None, 1, None),
        (None, 2, None),
        (None, 3, None),
        (0, 4, "value"),
        (1, 5, "value"),
        (2, 6, "value"),
    ]


def test_loops_report_hits_and_last_values():
    program = "total = 0\nfor i in range(3):\n    total += 2\nprint(total)"
    trace = ExecResult(
        "ok",
        stdout="6\n",
        answer="6",
        trace=[TraceStep(1, "total = 0", {"total": "0"})]
        + [TraceStep(3, "    total += 2", {"total": str(2 * k)}) for k in (1, 2, 3)],
    )
    lines = {r.line.number: r.line for r in align_draft_to_program("A: 6", program, trace).rows if r.line}
    assert (lines[3].hits, lines[3].values) == (3, {"total": "6"})


def test_diffs_are_word_and_line_level():
    assert token_diff("13 * 2", "9 * 2") == [("delete", "13"), ("insert", "9"), ("equal", "* 2")]
    assert line_diff("a = 1\nprint(a)", "a = 2\nprint(a)") == [
        ("delete", "a = 1"),
        ("insert", "a = 2"),
        ("equal", "print(a)"),
    ]


def test_a_program_locates_a_drafts_mistake_only_by_recomputing_it_or_using_what_it_left_out():
    def mistake(draft: str, program: str) -> str | None:
        return located_mistake(draft, program, run_program(program, trace=True), JANET_QUESTION)

    # a wrong calculation whose right value the program computes
    recomputes = "meals = 3 + 4\neggs = 16 * meals\nprint(eggs)"
    assert mistake(WRONG_ARITHMETIC_DRAFT, recomputes) == "16 * 7 = 111, but it is 112"
    # Janet's draft forgets the muffins: right arithmetic, but the program uses the 4 it never mentions
    assert mistake(JANET_DRAFT, JANET_PROGRAM).startswith("it never uses the question's 4 (")
    # a program that only reaches another answer has found nothing: a right draft misread
    right = "She has 16 - 3 - 4 = <<16-3-4=9>>9 eggs left.\nShe makes 9 * 2 = $<<9*2=18>>18.\nA: 18"
    assert mistake(right, "left = 16 - 3 - 4\nprint(left * 3)") is None
    # nor does one that never computes the wrong step's right value, or one that did not run
    assert mistake(WRONG_ARITHMETIC_DRAFT, "print(3 + 4 + 16)") is None
    assert located_mistake(WRONG_ARITHMETIC_DRAFT, recomputes, None) is None


def test_an_answer_that_does_not_follow_from_the_drafts_work_is_its_located_mistake():
    """Issue 25: a draft that computes 18 and then states 42 contradicts itself; a program that
    prints its last result, 18, has located the mistake. One that derives its answer in prose, or a
    program that prints something else, has not."""
    work = "She has 16 - 3 - 4 = <<16-3-4=9>>9 eggs left.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n"
    program = "left = 16 - 3 - 4\nprint(left * 2)"
    expected = "its answer does not follow from its work (it computes 18, then states 42)"
    assert located_mistake(work + "A: 42", program, run_program(program, trace=True), JANET_QUESTION) == expected
    assert unfollowed_answer(work + "The answer is 42.", "18") == expected
    assert unfollowed_answer(work + "A: 18", "18") is None  # it follows
    assert unfollowed_answer(work + "A: 42", "42") is None  # the program reached the stated answer
    assert unfollowed_answer(work + "A: 42", "7") is None  # another answer: it shows nothing
    assert unfollowed_answer("He works 50 / 20 = 2.5 years.\nA: 2", "2.5") is None  # rounded: it follows
    # an answer derived by a step of prose, not an equation: the work mentions it
    assert unfollowed_answer(work + "Half of that is 9 dollars.\nA: 9", "18") is None
    assert unfollowed_answer("She has no eggs.\nA: 42", "18") is None  # no calculation to contradict
