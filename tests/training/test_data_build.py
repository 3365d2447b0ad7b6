"""The data builder: programs from annotations, corrupted drafts, and labels checked by execution."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cap_app.answers import answers_equal
from cap_app.cli import main as cli_main
from cap_app.data.annotations import UnsupportedSolution, parse_solution
from cap_app.data.build import DataBuildConfig, build
from cap_app.data.corrupt import KINDS, corrupt, render_draft
from cap_app.sandbox import run_program

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "data" / "gsm8k" / "train.jsonl"

NATALIA_Q = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
             "How many clips did Natalia sell altogether in April and May?")
NATALIA_A = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
             "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
BETTY_Q = ("Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
           "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her "
           "parents. How much more money does Betty need to buy the wallet?")
BETTY_A = ("In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\n"
           "Betty's grandparents gave her 15 * 2 = $<<15*2=30>>30.\n"
           "This means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5")


def program_of(message_list: list[dict]) -> str:
    content = message_list[-1]["content"]
    assert content.startswith("```python\n") and content.endswith("\n```")
    return content[len("```python\n"):-len("\n```")]


def test_annotations_become_named_assignments_that_print_the_answer():
    solution = parse_solution(NATALIA_Q, NATALIA_A)
    assert solution.program() == (
        "friends = 48\n"
        "clips_may = friends / 2\n"
        "clips_altogether_april = friends + clips_may\n"
        "print(clips_altogether_april)\n"
    )
    result = run_program(solution.program())
    assert result.status == "ok" and answers_equal(result.answer, "72")


def test_solution_without_annotations_is_refused():
    with pytest.raises(UnsupportedSolution, match="no calculator annotations"):
        parse_solution("How many?", "She has 3 apples.\n#### 3")


@pytest.mark.parametrize("kind", KINDS)
def test_each_corruption_propagates_its_wrong_answer_to_the_draft_and_program(kind):
    solution = parse_solution(BETTY_Q, BETTY_A)
    corruption = corrupt(solution, kind, random.Random(1))
    assert corruption is not None and corruption.kind == kind
    draft, draft_answer = render_draft(solution, corruption, keep_annotations=False, final_style="A: {}")
    assert draft.endswith(f"A: {draft_answer}") and "<<" not in draft
    assert not answers_equal(draft_answer, "5")
    result = run_program(solution.program(corruption.steps))
    assert result.status == "ok" and abs(float(result.answer) - float(draft_answer)) < 0.01  # draft rounds


def test_gold_draft_keeps_the_prose_and_the_gold_answer():
    solution = parse_solution(BETTY_Q, BETTY_A)
    draft, answer = render_draft(solution, keep_annotations=True, final_style="The answer is {}.")
    assert answer == "5"
    assert draft == BETTY_A.replace("#### 5", "The answer is 5.")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cap-data")
    build(DataBuildConfig(input=str(TRAIN), output_dir=str(out), limit=30, corrupted_drafts=3, seed=3))
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_sft_program_executes_to_the_gold_answer(built):
    rows = read_jsonl(built / "sft.jsonl")
    assert len(rows) > 60
    assert {row["meta"]["draft_kind"] for row in rows} >= {"gold", "wrong_operation", "arithmetic_slip"}
    for row in rows:
        result = run_program(program_of(row["completion"]), trace=False)
        assert result.ok and answers_equal(result.answer, row["meta"]["gold"]), row["meta"]["id"]


def test_every_preference_pair_is_right_over_wrong_by_execution(built):
    rows = read_jsonl(built / "dpo.jsonl")
    assert len(rows) > 60
    for row in rows:
        gold = row["meta"]["gold"]
        chosen = run_program(program_of(row["chosen"]), trace=False)
        rejected = run_program(program_of(row["rejected"]), trace=False)
        assert chosen.ok and answers_equal(chosen.answer, gold), row["meta"]["id"]
        assert not (rejected.ok and answers_equal(rejected.answer, gold)), row["meta"]["id"]


def test_corrupted_drafts_are_wrong_and_gold_drafts_right(built):
    for row in read_jsonl(built / "sft.jsonl"):
        meta = row["meta"]
        assert answers_equal(meta["draft_answer"], meta["gold"]) == (meta["draft_kind"] == "gold"), meta["id"]
        assert meta["draft"] in row["prompt"][-1]["content"]


def test_report_counts_match_the_files(built):
    report = json.loads((built / "report.json").read_text())
    assert report["questions"] == 30
    assert report["sft_rows"] == len(read_jsonl(built / "sft.jsonl"))
    assert report["dpo_rows"] == len(read_jsonl(built / "dpo.jsonl"))
    assert report["verified_questions"] + report.get("program_mismatch", 0) + report.get(
        "unsupported_solution", 0) == 30


def test_same_seed_gives_the_same_data(built, tmp_path):
    build(DataBuildConfig(input=str(TRAIN), output_dir=str(tmp_path), limit=30, corrupted_drafts=3, seed=3))
    assert (tmp_path / "sft.jsonl").read_text() == (built / "sft.jsonl").read_text()


def test_cli_builds_data_and_reports_bad_input(tmp_path, capsys):
    source = tmp_path / "train.jsonl"
    source.write_text(json.dumps({"question": NATALIA_Q, "answer": NATALIA_A}) + "\n"
                      + json.dumps({"question": "How many?", "answer": "3 apples.\n#### 3"}) + "\n")
    out = tmp_path / "out"
    assert cli_main(["data", "build", "--input", str(source), "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verified_questions"] == 1 and report["unsupported_solution"] == 1
    assert cli_main(["data", "build", "--input", str(tmp_path / "missing.jsonl"), "--output-dir", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli_main(["data", "build", "--input", str(source), "--kinds", "typo", "--output-dir", str(out)]) == 2
    assert "unknown corruption kind" in capsys.readouterr().err
