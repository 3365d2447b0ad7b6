"""Faithful programs (a draft's own steps, recomputed), slip and plain drafts, and the data built from them."""

from __future__ import annotations

import json
import random

import pytest

from cap_app.cli import main as cli_main
from cap_app.data.faithful import computations, faithful_program
from cap_app.data.faithful_build import FaithfulBuildConfig, build_faithful, copying_program, parse_kinds
from cap_app.data.variants import plain_draft, slip_draft, write_variants
from cap_app.engine.answers import answers_equal, extract_draft_answer
from cap_app.sandbox import run_program
from tests.helpers.paths import DRAFTS_DEV

JANET = (
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\nA: 18"
)
# real GPT-3 draft (dev item 0, 175b_verification): three steps, the last uses the first two's results
JANET_175B = (
    "Janet eats 3 duck eggs for breakfast and bakes 4 into muffins so 3 + 4 = <<3+4=7>>7 duck eggs are used\n"
    "Each day Janet's ducks lay 16 eggs and she uses 7, 16 - 7 = <<16-7=9>>9 duck eggs are for sale\n"
    "She sells her eggs for $2 per egg and has 9 available for sale so 2 * 9 = $<<2*9=18>>18 per day\nA: 18"
)


def answer_of(program: str) -> str | None:
    result = run_program(program, trace=False)
    assert result.ok, result.error
    return result.answer


def test_faithful_program_names_steps_and_refers_to_earlier_results():
    assert faithful_program(JANET) == (
        "duck_eggs_day = 16 - 3 - 4\nday_farmer_market = duck_eggs_day * 2\nprint(day_farmer_market)\n"
    )
    program = faithful_program(JANET_175B)
    assert program.splitlines()[-2:] == ["per_day = 2 * duck_eggs_sale", "print(per_day)"]
    assert "duck_eggs_sale = 16 - duck_eggs" in program
    assert answer_of(program) == "18"


def test_plain_prose_equations_become_python_arithmetic():
    draft = "The shirt costs $1,200 x 2% = $24 in tax.\nSo she pays 1,200 + 24 = $1224 in all.\nThe answer is 1224."
    steps = computations(draft)
    assert [(s.expression, s.stated) for s in steps] == [("1200 * (2 / 100)", "24"), ("1200 + 24", "1224")]
    assert answers_equal(answer_of(faithful_program(draft)), "1224")
    assert faithful_program("I think it is about nine.\nA: 9") is None


def test_a_slip_propagates_through_the_draft_and_the_faithful_program_recovers_it():
    slipped, step = next(
        filter(None, (slip_draft(JANET_175B, "18", random.Random(seed), step=0) for seed in range(20)))
    )
    assert step == 0
    lines = slipped.splitlines()
    assert lines[0].startswith("Janet eats 3 duck eggs") and "3 + 4 = <<3+4=" in lines[0]
    wrong = computations(slipped)[0].stated
    assert wrong != "7"
    # the later text keeps using the wrong number, and its results follow from it
    later = 16 - float(wrong)
    assert f"she uses {wrong}, 16 - {wrong}" in lines[1]
    assert extract_draft_answer(slipped) != "18" and lines[-1] == f"A: {extract_draft_answer(slipped)}"
    assert computations(slipped)[1].stated_value == later
    # the draft is now wrong; recomputing its own steps gives the gold answer back
    assert answers_equal(answer_of(faithful_program(slipped)), "18")
    assert not answers_equal(answer_of(copying_program(slipped)), "18")


def test_slips_are_seeded_and_only_of_right_drafts():
    first = slip_draft(JANET_175B, "18", random.Random(5))
    assert first == slip_draft(JANET_175B, "18", random.Random(5))
    assert slip_draft(JANET_175B, "19", random.Random(5)) is None  # not a right draft
    assert slip_draft("She has 3 + 4 = <<3+4=7>>7 eggs.\nA: 7", "7", random.Random(0)) is None  # one step
    last, step = slip_draft(JANET, "18", random.Random(1), step=1)
    assert step == 1 and last.splitlines()[0] == JANET.splitlines()[0]  # a last-step slip leaves earlier text


def test_plain_draft_drops_calculator_annotations_only():
    assert plain_draft(JANET) == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the farmer’s market.\nA: 18"
    )
    assert faithful_program(plain_draft(JANET)) == faithful_program(JANET)


def test_variants_command_writes_seeded_slip_and_plain_files(tmp_path):
    source = tmp_path / "dev.jsonl"
    source.write_text("".join(DRAFTS_DEV.read_text().splitlines(keepends=True)[:12]))
    slips, again, plain = tmp_path / "slips.jsonl", tmp_path / "again.jsonl", tmp_path / "plain.jsonl"
    assert cli_main(["data", "variants", "--kind", "slip", "--input", str(source), "--output", str(slips)]) == 0
    assert cli_main(["data", "variants", "--kind", "slip", "--input", str(source), "--output", str(again)]) == 0
    assert slips.read_text() == again.read_text()
    originals = {json.loads(line)["question"]: json.loads(line) for line in source.read_text().splitlines()}
    slipped = 0
    for line in slips.read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if isinstance(value, dict):
                slipped += 1
                assert originals[row["question"]][key]["is_correct"]  # only right drafts slip
                assert value["original"] == originals[row["question"]][key]["solution"]
                gold = extract_draft_answer(row["ground_truth"])
                assert not answers_equal(extract_draft_answer(value["solution"]), gold)
    assert slipped >= 10
    counts = write_variants(source, plain, kind="plain")
    assert counts["rows"] == 12 and counts["6b_finetuning"] == 12
    for line in plain.read_text().splitlines():
        assert not any("<<" in value["solution"] for value in json.loads(line).values() if isinstance(value, dict))


def test_faithful_build_rows_are_verified_by_execution(tmp_path):
    report = build_faithful(FaithfulBuildConfig(limit=40, output_dir=str(tmp_path), seed=3))
    sft = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    dpo = [json.loads(line) for line in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    assert report["sft_rows"] == len(sft) >= 30 and report["dpo_rows"] == len(dpo) >= 5
    assert {row["meta"]["draft_kind"] for row in sft} == {"right", "plain", "slip", "plain_slip"}
    for row in sft:
        program = row["completion"][0]["content"].removeprefix("```python\n").removesuffix("\n```")
        assert answers_equal(answer_of(program), row["meta"]["gold"])
        if row["meta"]["draft_kind"].startswith("plain"):
            assert "<<" not in row["meta"]["draft"]
        assert row["meta"]["draft_correct"] == (row["meta"]["draft_kind"] in ("right", "plain"))
    for row in dpo:
        rejected = row["rejected"][0]["content"].removeprefix("```python\n").removesuffix("\n```")
        assert not answers_equal(answer_of(rejected), row["meta"]["gold"])
    rebuilt = build_faithful(FaithfulBuildConfig(limit=40, output_dir=str(tmp_path / "again"), seed=3))
    assert (tmp_path / "again" / "sft.jsonl").read_text() == (tmp_path / "sft.jsonl").read_text()
    assert rebuilt["sft_rows"] == report["sft_rows"]


def test_kinds_option_is_checked():
    assert parse_kinds("right:3, slip") == {"right": 3.0, "slip": 1.0}
    for bad in ("wrong:1", "right:x", "right:0", ""):
        with pytest.raises(ValueError):
            parse_kinds(bad)
