"""The export carries the refiner's verdict of each judged refinement (verdict, program answer,
triage confidence), so a team can compare it with their own judgements: in the CSV, in the DPO and
KTO rows' `meta`, and per verdict in the summary."""

from __future__ import annotations

import csv
import dataclasses
import json

from cap_app.annotate.export import export
from cap_app.annotate.item_files import load_batch
from tests.annotator.conftest import RIGHT_PROGRAM, WRONG_PROGRAM, make_result, write_jsonl


def with_logprob(result, logprob: float):
    return dataclasses.replace(result, candidates=[dataclasses.replace(result.candidates[0], logprob=logprob)])


def judged_batch(store, tmp_path):
    """Janet's draft (answer 26) with a right program (disagrees, -0.7) judged yes and a wrong one
    (agrees, -0.2) judged no by ann; bob says no to the right one too (a conflict: not in DPO/KTO)."""
    rows = [with_logprob(make_result(RIGHT_PROGRAM, "18"), -0.7), with_logprob(make_result(WRONG_PROGRAM, "26"), -0.2)]
    batch = load_batch(store, write_jsonl(tmp_path / "b.jsonl", [r.to_dict() for r in rows])).batch
    right, wrong = store.refinements(store.item_at(batch.id, 0).id)
    store.judge(right.id, "ann", correct="yes")
    store.judge(wrong.id, "ann", correct="no")
    return right, wrong


def test_dpo_and_kto_meta_carry_each_programs_refiner_verdict(store, tmp_path):
    judged_batch(store, tmp_path)
    export(store, "dpo", tmp_path / "dpo.jsonl")
    [pair] = [json.loads(line) for line in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    assert pair["meta"]["refiner"] == {
        "chosen": {"verdict": "disagrees", "program_answer": "18", "confidence": -0.7},
        "rejected": {"verdict": "agrees", "program_answer": "26", "confidence": -0.2},
    }
    export(store, "kto", tmp_path / "kto.jsonl")
    kto = [json.loads(line) for line in (tmp_path / "kto.jsonl").read_text().splitlines()]
    assert [(row["label"], row["meta"]["refiner"]["completion"]["verdict"]) for row in kto] == [
        (True, "disagrees"),
        (False, "agrees"),
    ]


def test_the_csv_has_the_verdict_and_confidence_of_each_judged_refinement(store, tmp_path):
    judged_batch(store, tmp_path)
    export(store, "csv", tmp_path / "all.csv")
    with open(tmp_path / "all.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["correct"], r["verdict"], r["program_answer"], r["draft_answer"], r["confidence"]) for r in rows] == [
        ("yes", "disagrees", "18", "26", "-0.7"),
        ("no", "agrees", "26", "26", "-0.2"),
    ]


def test_the_summary_counts_the_judgements_per_verdict(store, tmp_path):
    right, _ = judged_batch(store, tmp_path)
    store.judge(right.id, "bob", correct="no")
    summary = export(store, "kto", tmp_path / "kto.jsonl")
    lines = summary.text().splitlines()
    assert "  refiner said disagrees: judged correct yes 1, no 1, unsure 0" in lines
    assert "  refiner said agrees: judged correct yes 0, no 1, unsure 0" in lines
    assert not any("unconfirmed" in line for line in lines)  # no judgement of such a refinement
