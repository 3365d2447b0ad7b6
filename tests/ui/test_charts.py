"""Plotly figures: vote bars coloured by agreement with draft and gold, stage times, candidates, labels."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

from cap_app.annotate.export import ExportSummary
from cap_app.engine.reading import read_result
from cap_app.engine.results import Candidate
from cap_app.sandbox.result import ExecResult
from cap_app.ui.charts import (
    CATEGORIES,
    NO_ANSWER,
    candidates_figure,
    label_counts_figure,
    stage_times_figure,
    votes_figure,
)


def _vote_result(janet_result, *, gold="18"):
    def cand(answer, status="ok"):
        return Candidate("", "print(1)", ExecResult(status, answer=answer, duration_ms=5.0), answer, tokens=10)

    candidates = [cand("18"), cand("18"), cand("26"), cand("<b>x</b>"), cand(None, "error")]
    return dataclasses.replace(
        janet_result,
        strategy="vote",
        candidates=candidates,
        chosen=0,
        votes={"18": 2, "26": 1, "<b>x</b>": 1},
        gold=gold,
    )


def _bars(fig):
    return {trace.name: (list(trace.x), list(trace.y), trace.marker.color) for trace in fig.data}


def test_votes_are_coloured_by_agreement_with_draft_and_gold(janet_result):
    fig = votes_figure(read_result(_vote_result(janet_result)))
    bars = _bars(fig)
    assert bars["differs from draft, right"] == (["18"], [2], CATEGORIES[(False, True)][1])
    assert bars["same as draft, wrong"] == (["26"], [1], CATEGORIES[(True, False)][1])
    assert bars["differs from draft, wrong"][:2] == (["&lt;b&gt;x&lt;/b&gt;"], [1])  # escaped, not bold
    assert bars["program failed"][:2] == ([NO_ANSWER], [1])
    right = next(t for t in fig.data if t.name == "differs from draft, right")
    assert list(right.text) == ["2 ★ chosen"]
    assert "draft said 26, gold 18" in fig.layout.title.text
    json.loads(fig.to_json())  # serialisable for gr.Plot


def test_votes_without_gold_only_compare_with_the_draft(janet_result):
    bars = _bars(votes_figure(read_result(_vote_result(janet_result, gold=None))))
    assert set(bars) == {"differs from draft", "same as draft", "program failed"}
    assert bars["differs from draft"][:2] == (["18", "&lt;b&gt;x&lt;/b&gt;"], [2, 1])


def test_stage_times_figure_shows_seconds_per_stage(janet_result):
    fig = stage_times_figure(janet_result)
    (bar,) = fig.data
    assert list(bar.y) == ["read the prompt", "write", "run in the sandbox"]
    assert list(bar.x) == [0.004, 1.5, 0.012]
    assert "1.52 s in all, 40 tokens generated" in fig.layout.title.text


def test_candidates_figure_has_a_row_per_program_coloured_by_how_it_ended(janet_result):
    result = _vote_result(janet_result)
    result.candidates.append(
        Candidate(
            "", "x = (", ExecResult("error", error="SyntaxError", duration_ms=1.0), None, tokens=16, finish="length"
        )
    )
    fig = candidates_figure(result)
    rows = {t.name: (list(t.y), list(t.text)) for t in fig.data}
    assert rows == {
        "answered": (
            ["#1", "#2", "#3", "#4"],
            ["18 ★ · 5 ms", "18 · 5 ms", "26 · 5 ms", "&lt;b&gt;x&lt;/b&gt; · 5 ms"],
        ),
        "error": (["#5"], ["error · 5 ms"]),
        "cut off": (["#6"], ["cut off · 1 ms"]),  # issue 25: not "error", not "program failed"
    }
    assert list(fig.layout.yaxis.categoryarray) == [f"#{i}" for i in range(1, 7)]
    assert all(trace.cliponaxis is False for trace in fig.data)


def test_votes_name_a_program_cut_off_as_cut_off_not_as_failed(janet_result):
    result = _vote_result(janet_result)
    result.candidates[4] = dataclasses.replace(result.candidates[4], finish="length")
    bars = _bars(votes_figure(read_result(result)))
    assert "program failed" not in bars and bars["cut off before it was finished"][:2] == (["(cut off)"], [1])


def test_label_counts_are_grouped_per_annotator_with_names_made_inert():
    counts = {"ann": Counter(yes=2, no=1), "<a href=x>eve</a>": Counter(unsure=1)}
    summary = ExportSummary(
        judgements=4,
        annotators=sorted(counts),
        labeled_programs=0,
        conflicts=0,
        without_program=0,
        agreements=[],
        label_counts=counts,
    )
    fig = label_counts_figure(summary)
    assert [(t.name, list(t.x), list(t.y)) for t in fig.data] == [
        ("&lt;a href=x&gt;eve&lt;/a&gt;", ["yes", "no", "unsure"], [0, 0, 1]),
        ("ann", ["yes", "no", "unsure"], [2, 1, 0]),
    ]
    assert fig.layout.barmode == "group"
