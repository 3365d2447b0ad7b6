"""Verdict sentence and badges, the draft vs program view, trace rows, printed output."""

from __future__ import annotations

import dataclasses

from cap_app.annotate.export import judged_program
from cap_app.commands.refine import format_result
from cap_app.engine.reading import read_result
from cap_app.engine.results import Candidate
from cap_app.sandbox.result import ExecResult, TraceStep
from cap_app.ui.views import (
    execution_text,
    message_html,
    render_side_by_side,
    trace_table,
    verdict_html,
    verdict_sentence,
)
from tests.ui.conftest import make_result

XSS_DRAFT = 'She has <script>alert("draft")</script> 16 - 3 = 13 eggs\nA: 13'
XSS_PROGRAM = 'x = 16 - 3\nprint("<img src=x onerror=alert(1)>")'


def test_verdict_sentence_names_both_answers(janet_result):
    assert verdict_sentence(read_result(janet_result)) == (
        "The refinement disagrees with the draft: 18 vs 26. Gold answer 18: the program is right and the draft "
        "is wrong."
    )
    agreeing = make_result(refined="26", votes={"26": 1}, verdict="agrees", gold=None)
    assert verdict_sentence(read_result(agreeing)) == "The refinement agrees with the draft: 26."


def test_verdict_names_the_drafts_mistake_or_says_its_answer_stands_unconfirmed(janet_result):
    corrected = dataclasses.replace(janet_result, gold=None, draft_mistake="16 - 3 = 12, but it is 13")
    assert verdict_sentence(read_result(corrected)) == (
        "The refinement corrects the draft: 18, not 26. Its mistake: 16 - 3 = 12, but it is 13."
    )
    kept = dataclasses.replace(janet_result, gold=None, refined_answer="26", verdict="unconfirmed")
    assert verdict_sentence(read_result(kept)).startswith(
        "The program got 18 but found no wrong calculation or left-out quantity in the draft, so the draft's "
        "answer 26 stands, unconfirmed"
    )
    page = verdict_html(read_result(kept))  # the badges: the draft unconfirmed beside what the program printed
    assert "draft (unconfirmed)" in page and "program (greedy)" in page and "checked by the program" not in page


def test_verdict_sentence_when_no_program_ran():
    failed = ExecResult("timeout", error="time limit of 5 s exceeded")
    result = make_result(
        candidates=[Candidate("", "while True: pass", failed, None)],
        chosen=None,
        refined=None,
        votes={},
        verdict="no_answer",
        gold=None,
    )
    assert verdict_sentence(read_result(result)) == (
        "No program produced an answer (time limit of 5 s exceeded), so the draft's answer 26 stands, unverified."
    )


def test_verdict_html_marks_answers_against_gold_and_escapes(janet_result):
    page = verdict_html(read_result(janet_result))
    assert 'data-verdict="disagrees"' in page
    assert page.count("✓") == 1 and page.count("✗") == 1  # refined right, draft wrong
    hostile = dataclasses.replace(janet_result, refined_answer="<script>x</script>")
    assert "<script>" not in verdict_html(read_result(hostile))
    assert "<b>" not in message_html("<b>busy</b>")


def test_trace_table_rows_and_truncation(janet_result):
    rows = trace_table(janet_result)
    assert rows[3] == [4, "left = eggs - breakfast - muffins", "left = 9"]
    assert rows[-1] == [6, "print(money)", ""]
    truncated = ExecResult("ok", answer="1", trace=[TraceStep(1, "x = 1", {"x": "1"})], trace_truncated=True)
    result = make_result(candidates=[Candidate("", "x = 1", truncated, "1")])
    assert trace_table(result)[-1] == ["…", "(trace truncated)", ""]


def test_execution_text_shows_output_errors_and_truncation():
    run = ExecResult(
        "error", stdout="partial\n", error="line 3: division by zero", stdout_truncated=True, duration_ms=7.4
    )
    result = make_result(
        candidates=[Candidate("", "print(1/0)", run, None)], chosen=None, refined=None, votes={}, verdict="no_answer"
    )
    assert execution_text(result) == "partial\n[output truncated]\nerror: line 3: division by zero\n[error, 7 ms]"
    assert execution_text(make_result(candidates=[], chosen=None, refined=None, votes={})) == "No program was run."


CUT_AT_LIMIT = ExecResult("error", error="line 24: name 'egg' is not defined")


def no_answer(candidate: Candidate, **changes):
    return make_result(
        candidates=[candidate], chosen=None, refined=None, votes={}, verdict="no_answer", gold=None, **changes
    )


def test_a_program_cut_off_is_reported_as_cut_off_not_as_its_error():
    at_limit = no_answer(Candidate("", "eggs = 16\negg", CUT_AT_LIMIT, None, tokens=320, finish="length"))
    assert verdict_sentence(read_result(at_limit)) == (
        "No program produced an answer (it was cut off at the token limit of 320 tokens before it was "
        "finished), so the draft's answer 26 stands, unverified. Raise “Max new tokens” and refine again."
    )
    looping = no_answer(Candidate("", "x = 1\nx = 1\nx = 1", CUT_AT_LIMIT, None, tokens=90, finish="repetition"))
    assert verdict_sentence(read_result(looping)) == (
        "No program produced an answer (it was cut off by the repetition stop after 90 tokens: it kept writing the "
        "same lines), so the draft's answer 26 stands, unverified. More tokens will not help; try the vote or "
        "repair strategy, or another model."
    )
    beside = render_side_by_side(read_result(at_limit))
    assert "The program was cut off at the token limit of 320 tokens" in beside and "not defined" not in beside
    cli = format_result(dataclasses.replace(at_limit, timings_ms={"total": 900.0}))
    assert "(the program was cut off at the token limit of 320 tokens before it was finished)" in cli
    # the output box too (issue 25): the cut and what to change, not the error of the line it was cut at
    syntax = ExecResult("error", error="line 2: SyntaxError: '(' was never closed", duration_ms=3.0)
    cut = no_answer(Candidate("", "eggs = 16\nprint((eggs", syntax, None, tokens=16, finish="length"))
    assert execution_text(cut) == (
        "(nothing printed)\nThe program was cut off at the token limit of 16 tokens before it was finished. "
        "Raise “Max new tokens” and refine again.\n[cut off, ran 3 ms]"
    )
    # where the budget was already lowered to what the model's context leaves, raising it cannot help
    lowered = dataclasses.replace(cut, notes=["“Max new tokens” was lowered from 400 to 16 for this draft: ..."])
    assert "shorten the draft" in execution_text(lowered) and "Raise" not in verdict_sentence(read_result(lowered))
    assert "lowered from 400 to 16" in verdict_html(read_result(lowered))
    assert "note: “Max new tokens” was lowered from 400 to 16" in format_result(
        dataclasses.replace(lowered, timings_ms={"total": 900.0})
    )  # the CLI says it too


def test_without_gold_the_draft_badge_says_what_the_sentence_says():
    undefined = ExecResult("error", error="line 1: name 'x' is not defined")
    unverified = no_answer(Candidate("", "print(x)", undefined, None))
    page = verdict_html(read_result(unverified))
    assert "draft (unverified)" in page and "checked by the program" not in page and "stands, unverified" in page
    checked = verdict_html(read_result(make_result(gold=None)))
    assert "draft (checked by the program)" in checked and checked.count("✗") == 1  # 26 refuted by the program's 18
    silent = dataclasses.replace(unverified, draft_answer=None)
    assert verdict_sentence(read_result(silent)) == (
        "No program produced an answer (line 1: name 'x' is not defined), and the draft states no final answer."
    )
    assert "unverified" not in verdict_html(read_result(silent)) and "checked by the program" not in verdict_html(
        read_result(silent)
    )


def test_side_by_side_shows_checks_values_and_dropped_quantities(janet_result):
    page = render_side_by_side(read_result(janet_result))
    assert 'class="cap-sbs"' in page
    assert "16 - 3 = 13 ✓" in page
    assert "→ left = 9" in page and "prints 18" in page
    assert "<ins>- 4</ins>" in page
    assert "Quantities the program uses that the draft dropped" in page and "<b>4</b>" in page


def test_side_by_side_escapes_model_and_user_text():
    execution = ExecResult(
        "ok",
        stdout="<img src=x onerror=alert(1)>\n",
        answer="<img src=x onerror=alert(1)>",
        trace=[TraceStep(1, "x = 16 - 3", {"x": "13"}), TraceStep(2, "print(...)", {})],
    )
    result = make_result(
        draft=XSS_DRAFT, candidates=[Candidate("", XSS_PROGRAM, execution, execution.answer)], refined=execution.answer
    )
    page = render_side_by_side(read_result(result))
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&quot;draft&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_failed_or_missing_program_still_renders_the_checked_draft(janet_result):
    failed = ExecResult("error", error="line 2: name 'x' is not defined")
    result = make_result(
        candidates=[Candidate("", "y = 1\nprint(x)", failed, None)],
        chosen=None,
        refined=None,
        votes={},
        verdict="no_answer",
    )
    page = render_side_by_side(read_result(result))
    assert "line 2: name &#x27;x&#x27; is not defined" in page and "16 - 3 = 13 ✓" in page
    empty = render_side_by_side(
        read_result(make_result(candidates=[], chosen=None, refined=None, votes={}, verdict="no_answer"))
    )
    assert "No program was generated." in empty and "no program line computes this" in empty


def test_other_programs_are_diffed_line_by_line_against_the_chosen(janet_result):
    other_program = "eggs = 16\nleft = eggs - 3\nprint(left * 2)"
    other = Candidate("", other_program, ExecResult("ok", stdout="26\n", answer="26"), "26")
    result = dataclasses.replace(
        janet_result, candidates=[janet_result.candidates[0], other], votes={"18": 1, "26": 1}, strategy="vote"
    )
    page = render_side_by_side(read_result(result))
    assert "Other programs (1)" in page
    assert "<ins>+ left = eggs - 3</ins>" in page and "<del>- muffins = 4</del>" in page


def test_every_view_shows_the_chosen_program_else_the_last():
    """What annotators judge (the export) is what the views show: the winner, else the last attempt."""

    def ran(program: str, answer: str | None) -> Candidate:
        trace = [TraceStep(1, program, {})]
        if answer is None:
            return Candidate("", program, ExecResult("error", error=f"line 1: {program} failed", trace=trace), None)
        return Candidate("", program, ExecResult("ok", stdout=f"{answer}\n", answer=answer, trace=trace), answer)

    winner, runner_up = ran("print(18)", "18"), ran("print(26)", "26")
    voted = make_result(candidates=[winner, runner_up], chosen=0, votes={"18": 1, "26": 1}, strategy="vote")
    first_try, last_try = ran("print(x)", None), ran("print(x + 1)", None)
    failed = make_result(
        candidates=[first_try, last_try], chosen=None, refined=None, votes={}, verdict="no_answer", strategy="repair"
    )
    for result, shown in ((voted, winner), (failed, last_try)):
        assert result.shown_candidate is shown
        assert judged_program(result) == shown.program
        assert trace_table(result) == [[1, shown.program, ""]]
        assert (shown.answer or shown.execution.error) in execution_text(result)
        assert f'<span class="cap-lineno">1</span>{shown.program}</pre>' in render_side_by_side(read_result(result))
    assert "print(x) failed" not in execution_text(failed) + verdict_sentence(read_result(failed))
