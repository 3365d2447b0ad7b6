"""`refine` and `eval` driven in-process through cap_app.cli.main, on the tiny random model.

The tiny model writes random bytes, so its programs fail: these tests check the command line's
behaviour (modes, files, resuming, errors, the table and report), not the answers.
"""

import json
from pathlib import Path

import pytest

from cap_app.cli import main
from cap_app.engine.results import RefinementResult
from tests.helpers.paths import DRAFTS_DEV

FAST = ["--max-new-tokens", "4", "--no-trace"]


@pytest.fixture
def tiny(tiny_model_dir):
    return ["--model", tiny_model_dir, *FAST]


@pytest.mark.parametrize("command", ["refine", "eval"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--strategy" in out and "--model" in out and "--quantization" in out
    assert "--backend {auto,transformers,llama.cpp,openai}" in out and "--base-url" in out and "--concurrency" in out


def test_refine_one_draft_as_json(tiny, capsys):
    code = main(
        ["refine", "--question", "What is 2 + 3?", "--draft", "2 + 3 = 6\nA: 6", "--gold", "5", "--json", *tiny]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = RefinementResult.from_dict(json.loads(captured.out))
    assert (result.question, result.draft_answer, result.gold, result.draft_correct) == (
        "What is 2 + 3?",
        "6",
        "5",
        False,
    )
    assert len(result.candidates) == 1 and result.candidates[0].tokens == 4


def test_refine_one_draft_readable(tiny, capsys):
    code = main(["refine", "--question", "What is 2 + 3?", "--draft", "A: 6", "--strategy", "vote", "--n", "2", *tiny])
    out = capsys.readouterr().out
    assert code == 0
    assert "draft answer:   6" in out and "program 2" in out and "verdict:" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["refine"], "error: give --question (and --draft), or --input and --output"),
        (["refine", "--input", "x.jsonl"], "error: batch mode needs both --input and --output"),
        (["refine", "--question", "", "--draft", "A: 1"], "error: the question is empty"),
        (["refine", "--question", "q", "--n", "0"], "error: n must be >= 1"),
        (["refine", "--input", "/no/such.jsonl", "--output", "o.jsonl"], "error: no such input file: /no/such.jsonl"),
    ],
)
def test_refine_usage_errors(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(message)


def test_model_that_cannot_be_found_is_one_line_not_a_traceback(tmp_path, capsys):
    code = main(["refine", "--question", "q", "--model", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 1
    assert err == f"error: model '{tmp_path / 'missing'}' not found: no such file or folder\n"


def test_batch_skips_bad_lines_and_resumes(tiny, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "question": "What is 2 + 3?", "draft": "A: 6", "gold": "5"}),
                "{not json",
                json.dumps({"question": "What is 4 * 5?"}),
                json.dumps({"question": "What is 1 + 1?", "draft": "A: 2"}),
            ]
        )
        + "\n"
    )
    output = tmp_path / "out" / "refined.jsonl"
    code = main(["refine", "--input", str(source), "--output", str(output), *tiny])
    err = capsys.readouterr().err
    assert code == 1  # some lines were bad
    assert f"{source}:2: skipped: not valid JSON" in err
    assert f"{source}:3: skipped: missing 'draft'" in err
    assert "refined 2, already done 0, bad lines 2" in err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["question"] for r in records] == ["What is 2 + 3?", "What is 1 + 1?"]
    assert records[0]["id"] == "a" and records[0]["draft_correct"] is False and "id" not in records[1]

    with output.open("a") as out:  # a run killed while writing its third line
        out.write('{"question": "half a li')
    main(["refine", "--input", str(source), "--output", str(output), *tiny])
    assert "refined 0, already done 2, bad lines 2" in capsys.readouterr().err
    assert output.read_text().count("\n") == 2 and output.read_text().endswith("}\n")


def _drafts_sample(tmp_path, rows=3) -> tuple[Path, list[dict]]:
    lines = DRAFTS_DEV.read_text().splitlines()[:rows]
    path = tmp_path / "drafts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, [json.loads(line) for line in lines]


def test_eval_compares_strategies_on_the_drafts_file(tiny, tmp_path, capsys):
    path, rows = _drafts_sample(tmp_path)
    report = tmp_path / "report.json"
    code = main(
        [
            "eval",
            "--input",
            str(path),
            "--draft-key",
            "175b_verification",
            "--strategy",
            "greedy",
            "cot+cap",
            "--n",
            "2",
            "--report",
            str(report),
            *tiny,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    header, *table = out.split("\nverdict as a flag")[0].splitlines()  # the accuracy table, then the flags
    assert header.split()[:3] == ["strategy", "items", "draft"] and "wrong->right" in header
    assert [row.split()[0] for row in table] == ["greedy", "cot+cap"]
    data = json.loads(report.read_text())
    draft_accuracy = sum(r["175b_verification"]["is_correct"] for r in rows) / len(rows)
    for strategy in ("greedy", "cot+cap"):
        summary = data["summary"][strategy]
        assert summary["items"] == 3 and summary["draft_accuracy"] == pytest.approx(draft_accuracy)
    # cot+cap: the random model's programs fail, so the draft's own answer wins every vote
    assert data["summary"]["cot+cap"]["refined_accuracy"] == pytest.approx(draft_accuracy)
    # greedy: no program answers, so each draft's answer stands (unverified) and the programs score 0
    greedy = data["summary"]["greedy"]
    assert greedy["no_answer"] == 3 and greedy["refined_accuracy"] == pytest.approx(draft_accuracy)
    assert greedy["program_accuracy"] == 0 and greedy["right_to_wrong"] == 0
    assert [item["gold"] for item in data["items"]] == ["18", "3", "70000"]
    assert data["config"]["cot+cap"]["n"] == 2
    # why each item has no answer is in the report: every program's sandbox outcome and raw text
    for item in data["items"]:
        candidates = item["results"]["cot+cap"]["candidates"]
        assert len(candidates) == 2 and len(item["results"]["greedy"]["candidates"]) == 1
        for candidate in candidates:
            assert candidate["status"] in ("ok", "error", "rejected", "timeout", "memory")
            assert (candidate["status"] == "ok") == (candidate["error"] is None)
            assert candidate["answer"] is None and candidate["tokens"] > 0 and candidate["text"]


def test_eval_over_several_draft_sources_has_a_row_per_source(tiny, tmp_path, capsys):
    path, rows = _drafts_sample(tmp_path)
    report = tmp_path / "report.json"
    keys = ["6b_finetuning", "175b_verification"]
    assert (
        main(["eval", "--input", str(path), "--draft-key", *keys, "--limit", "2", "--report", str(report), *tiny]) == 0
    )
    table = capsys.readouterr().out.split("\nverdict as a flag")[0].splitlines()[1:]
    assert [row.split()[:2] for row in table] == [
        ["greedy", "[6b_finetuning]"],
        ["greedy", "[175b_verification]"],
        ["greedy", "[all]"],
    ]
    data = json.loads(report.read_text())
    assert data["summary"]["greedy"]["items"] == 4
    for key in keys:
        expected = sum(row[key]["is_correct"] for row in rows[:2]) / 2
        assert data["by_draft_key"][key]["greedy"]["draft_accuracy"] == pytest.approx(expected)
    assert [item["draft_key"] for item in data["items"]] == [keys[0]] * 2 + [keys[1]] * 2


def test_eval_limit_and_gsm8k_without_drafts(tiny, tmp_path, capsys):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(
        "".join(
            json.dumps({"question": f"What is {i} + 1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"}) + "\n"
            for i in range(5)
        )
    )
    report = tmp_path / "r.json"
    assert (
        main(["eval", "--input", str(path), "--draft-key", "none", "--limit", "2", "--report", str(report), *tiny]) == 0
    )
    data = json.loads(report.read_text())
    assert data["summary"]["greedy"]["items"] == 2 and [i["gold"] for i in data["items"]] == ["1", "2"]
    assert [i["draft_answer"] for i in data["items"]] == [None, None]


def test_eval_without_the_draft_key_explains_which_keys_exist(tiny, tmp_path, capsys):
    path, _ = _drafts_sample(tmp_path, rows=1)
    assert main(["eval", "--input", str(path), "--report", str(tmp_path / "r.json"), *tiny]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: skipped: missing 'draft' (drafts in this record: 175b_finetuning" in err
    assert "choose one as the draft key" in err and f"error: no usable items in {path}" in err
