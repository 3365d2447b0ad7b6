"""Execution-verified self-training data: prompts out as a refine batch, the model's programs back as pairs."""

from __future__ import annotations

import json

import pytest

from cap_app.cli import main as cli_main
from cap_app.data.faithful_build import FaithfulBuildConfig, build_faithful
from cap_app.data.onpolicy import OnPolicyPairsConfig, OnPolicyPromptsConfig, build_pairs, write_prompts
from cap_app.engine.program import extract_program
from cap_app.engine.results import Candidate, RefinementResult
from cap_app.sandbox import run_program


@pytest.fixture(scope="module")
def faithful_rows(tmp_path_factory):
    """Real faithful rows from the first GSM8K train questions (sandbox-verified programs)."""
    folder = tmp_path_factory.mktemp("faithful")
    build_faithful(FaithfulBuildConfig(output_dir=str(folder), limit=12, prompts_per_question=2, workers=1))
    return folder / "sft.jsonl"


def read(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def sampled(program: str) -> Candidate:
    execution = run_program(program, trace=False)
    return Candidate(text=program, program=program, execution=execution, answer=execution.answer)


def refined_record(prompt: dict, programs: list[str]) -> dict:
    """What `refine --input` writes for one prompt, with `programs` as the model's samples."""
    candidates = [sampled(program) for program in programs]
    result = RefinementResult(
        question=prompt["question"],
        draft=prompt["draft"],
        draft_answer=None,
        strategy="vote",
        candidates=candidates,
        chosen=0,
        refined_answer=candidates[0].answer,
        votes={},
        verdict="agrees",
        gold=prompt["gold"],
    )
    return {"id": prompt["id"], **result.to_dict()}


def test_prompts_are_a_seeded_pick_of_the_asked_kinds(faithful_rows, tmp_path):
    kinds = {row["meta"]["id"]: row["meta"]["draft_kind"] for row in read(faithful_rows)}
    first, again = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert write_prompts(
        OnPolicyPromptsConfig(sft=str(faithful_rows), output=str(first), limit=5, kinds="right")
    ) == min(5, list(kinds.values()).count("right"))
    write_prompts(OnPolicyPromptsConfig(sft=str(faithful_rows), output=str(again), limit=5, kinds="right"))
    prompts = read(first)
    assert prompts == read(again)
    write_prompts(OnPolicyPromptsConfig(sft=str(faithful_rows), output=str(again), limit=3, kinds="right"))
    assert read(again) == prompts[:3]  # a larger limit extends a smaller one's prompts
    assert all(kinds[p["id"]] == "right" and set(p) == {"id", "question", "draft", "gold"} for p in prompts)
    with pytest.raises(ValueError, match="no rows of kind"):
        write_prompts(OnPolicyPromptsConfig(sft=str(faithful_rows), output=str(first), kinds="nonsense"))


def test_wrong_samples_are_rejected_against_the_faithful_program(faithful_rows, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(OnPolicyPromptsConfig(sft=str(faithful_rows), output=str(prompts), limit=2, kinds="right,plain"))
    first, second = read(prompts)
    target = {row["meta"]["id"]: extract_program(row["completion"][-1]["content"]) for row in read(faithful_rows)}
    right = target[first["id"]]
    wrong, error, no_answer = "print(1234567)", "x = 1 / 0\nprint(x)", "x = 5"  # as extract_program gives them
    with open(tmp_path / "refined.jsonl", "w") as out:
        out.write(json.dumps(refined_record(first, [no_answer, right, error, wrong, wrong])) + "\n")
        out.write(json.dumps(refined_record(second, [target[second["id"]]])) + "\n")
        out.write(json.dumps({**refined_record(second, [wrong]), "id": "not-a-row"}) + "\n")

    report = build_pairs(
        OnPolicyPairsConfig(
            sft=str(faithful_rows),
            refined=str(tmp_path / "refined.jsonl"),
            output_dir=str(tmp_path / "out"),
            max_pairs_per_prompt=2,
        )
    )

    pairs = read(tmp_path / "out" / "dpo.jsonl")
    # distinct wrong programs, a wrong answer before a missing one before a crash, at most two
    assert [extract_program(p["rejected"][0]["content"]) for p in pairs] == [wrong, no_answer]
    assert [p["meta"]["rejected_kind"] for p in pairs] == ["wrong_answer", "no_answer"]
    assert all(extract_program(p["chosen"][0]["content"]) == right and p["meta"]["id"] == first["id"] for p in pairs)
    selftrain = read(tmp_path / "out" / "sft.jsonl")
    assert sorted(r["meta"]["id"] for r in selftrain) == sorted([first["id"], second["id"]])
    assert all(r["meta"]["source"] == "sampled" for r in selftrain)
    assert report["dpo_rows"] == 2 and report["samples"] == 6 and report["results_without_row"] == 1


def test_cli_writes_prompts_and_reports_a_missing_file(faithful_rows, tmp_path, capsys):
    output = tmp_path / "prompts.jsonl"
    assert (
        cli_main(["data", "onpolicy-prompts", "--sft", str(faithful_rows), "--output", str(output), "--limit", "3"])
        == 0
    )
    assert len(read(output)) == 3
    assert (
        cli_main(
            [
                "data",
                "onpolicy-pairs",
                "--sft",
                str(faithful_rows),
                "--refined",
                str(tmp_path / "missing.jsonl"),
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "no file at" in capsys.readouterr().err
