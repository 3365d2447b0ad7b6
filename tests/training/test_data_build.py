"""The data builder: programs from annotations, corrupted drafts, sampled drafts and programs, and
labels checked by execution."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cap_app.backends import transformers
from cap_app.backends.base import Generation
from cap_app.cli import main as cli_main
from cap_app.data.build import DataBuildConfig, build
from cap_app.data.corrupt import KINDS, corrupt, render_draft
from cap_app.data.gsm8k_programs import UnsupportedSolution, parse_solution
from cap_app.engine.answers import answers_equal
from cap_app.engine.program import extract_program
from cap_app.sandbox import run_program
from tests.helpers.paths import TRAIN

NATALIA_Q = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
NATALIA_A = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
BETTY_Q = (
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her "
    "parents. How much more money does Betty need to buy the wallet?"
)
BETTY_A = (
    "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\n"
    "Betty's grandparents gave her 15 * 2 = $<<15*2=30>>30.\n"
    "This means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5"
)


def program_of(message_list: list[dict]) -> str:
    content = message_list[-1]["content"]
    assert content.startswith("```python\n") and content.endswith("\n```")
    return content[len("```python\n") : -len("\n```")]


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


def test_question_quantities_are_named_by_their_own_phrase():
    # the one number rule (cap_app.engine.arithmetic.NUMBER) reads ".5" and leaves the comma after "17" out, so "17"
    # is named by its own clause; the builder's old rule read "17," and named it after the next clause
    question = "Savannah collected 17, and Clayton collected 29. Each shell weighs .5 ounces."
    answer = "Together 17+29 = <<17+29=46>>46 shells.\nThey weigh 46*.5 = <<46*.5=23>>23 ounces.\n#### 23"
    solution = parse_solution(question, answer)
    assert solution.quantities == {"savannah_collected": 17, "clayton_collected": 29, "ounces": 0.5}


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
        assert meta["draft_correct"] == (meta["draft_kind"] == "gold"), meta["id"]
        assert meta["draft"] in row["prompt"][-1]["content"]


def test_report_counts_match_the_files(built):
    report = json.loads((built / "report.json").read_text())
    assert report["questions"] == 30
    assert report["sft_rows"] == len(read_jsonl(built / "sft.jsonl"))
    assert report["dpo_rows"] == len(read_jsonl(built / "dpo.jsonl"))
    assert (
        report["verified_questions"] + report.get("program_mismatch", 0) + report.get("unsupported_solution", 0) == 30
    )
    assert not any(key.startswith("sampled") for key in report)  # no model given, nothing sampled
    assert {row["meta"]["source"] for row in read_jsonl(built / "sft.jsonl")} == {"annotations"}


def test_same_seed_gives_the_same_data(built, tmp_path):
    build(DataBuildConfig(input=str(TRAIN), output_dir=str(tmp_path), limit=30, corrupted_drafts=3, seed=3))
    assert (tmp_path / "sft.jsonl").read_text() == (built / "sft.jsonl").read_text()


def test_cli_builds_data_and_reports_bad_input(tmp_path, capsys):
    source = tmp_path / "train.jsonl"
    source.write_text(
        json.dumps({"question": NATALIA_Q, "answer": NATALIA_A})
        + "\n"
        + json.dumps({"question": "How many?", "answer": "3 apples.\n#### 3"})
        + "\n"
    )
    out = tmp_path / "out"
    assert cli_main(["data", "build", "--input", str(source), "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verified_questions"] == 1 and report["unsupported_solution"] == 1
    assert cli_main(["data", "build", "--input", str(tmp_path / "missing.jsonl"), "--output-dir", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli_main(["data", "build", "--input", str(source), "--kinds", "typo", "--output-dir", str(out)]) == 2
    assert "unknown corruption kind" in capsys.readouterr().err


# Model texts for the scripted generator: a correct program (72), a wrong one (144), one that
# crashes, one with no program at all; and two prose drafts, one right and one wrong.
CORRECT = "Here it is:\n```python\nfriends = 48\nmay = friends / 2\nprint(friends + may)\n```"
WRONG = "```python\nprint(48 + 48 * 2)\n```"
CRASH = "```python\nclips = 48 / 0\nprint(clips)\n```"
NO_PROGRAM = "I am not sure how to solve this."
PROGRAM_TEXTS = [CORRECT, WRONG, CRASH, NO_PROGRAM]
RIGHT_DRAFT = "In May she sold 48 / 2 = 24 clips, so 48 + 24 = 72 in all.\nThe answer is 72."
WRONG_DRAFT = "In May she sold 48 * 2 = 96 clips, so 48 + 96 = 144 in all.\nThe answer is 144."
DRAFT_TEXTS = [RIGHT_DRAFT, WRONG_DRAFT]


@pytest.fixture
def scripted_generation(monkeypatch) -> list[tuple[int, int]]:
    """Replace generation with fixed texts (the i-th sample of every prompt gets the i-th text) and
    record each call as (prompts, samples per prompt)."""
    calls = []

    def fake_generate_batch(loaded, prompts, config, **kwargs):
        calls.append((len(prompts), config.n))
        groups = []
        for prompt in prompts:
            texts = PROGRAM_TEXTS if "<draft>" in prompt else DRAFT_TEXTS
            groups.append(
                [
                    Generation(
                        text=texts[i % len(texts)], prompt_tokens=1, new_tokens=1, mean_logprob=None, finish="eos"
                    )
                    for i in range(config.n)
                ]
            )
        return groups

    monkeypatch.setattr(transformers, "generate_batch", fake_generate_batch)
    return calls


def build_natalia(tmp_path: Path, model_dir: str, **options) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "train.jsonl"
    source.write_text(json.dumps({"question": NATALIA_Q, "answer": NATALIA_A}) + "\n")
    out = tmp_path / "out"
    build(
        DataBuildConfig(
            input=str(source),
            output_dir=str(out),
            corrupted_drafts=1,
            sample_model=model_dir,
            sampled_drafts=2,
            sampled_programs=4,
            **options,
        )
    )
    return out


def ran_to_gold(message_list: list[dict], gold: str) -> bool:
    result = run_program(program_of(message_list), trace=False)
    return result.ok and answers_equal(result.answer, gold)


def test_sampled_programs_are_labelled_by_execution(tmp_path, tiny_model_dir, scripted_generation):
    out = build_natalia(tmp_path, tiny_model_dir, max_pairs_per_prompt=100)
    sft, dpo = read_jsonl(out / "sft.jsonl"), read_jsonl(out / "dpo.jsonl")
    report = json.loads((out / "report.json").read_text())
    correct = extract_program(CORRECT)
    wrong = {extract_program(text) for text in (WRONG, CRASH, NO_PROGRAM)}

    # gold, one corrupted and two sampled drafts; the sampled ones are labelled by their answer
    prompts = {row["meta"]["id"]: row["meta"] for row in sft}
    assert len(prompts) == 4 and [meta["draft_kind"] for meta in prompts.values()].count("sampled") == 2
    sampled_drafts = {meta["draft"]: meta for meta in prompts.values() if meta["draft_kind"] == "sampled"}
    assert sampled_drafts[RIGHT_DRAFT]["draft_correct"] and sampled_drafts[RIGHT_DRAFT]["draft_answer"] == "72"
    assert not sampled_drafts[WRONG_DRAFT]["draft_correct"]

    # every prompt: SFT on the annotation program and on the sampled correct one, never on the others
    assert sorted((row["meta"]["source"], program_of(row["completion"]) == correct) for row in sft) == sorted(
        [("annotations", False), ("sampled", True)] * 4
    )
    for row in dpo:
        meta = row["meta"]
        assert ran_to_gold(row["chosen"], meta["gold"]), meta["id"]
        assert not ran_to_gold(row["rejected"], meta["gold"]), meta["id"]
        assert program_of(row["rejected"]) != correct
        if meta["rejected_source"] == "sampled":
            assert program_of(row["rejected"]) in wrong
            assert meta["rejected_kind"] in {"wrong_answer", "error", "rejected"}
    sampled_rejected = {program_of(row["rejected"]) for row in dpo if row["meta"]["rejected_source"] == "sampled"}
    assert sampled_rejected == wrong
    assert {row["meta"]["chosen_source"] for row in dpo} == {"annotations", "sampled"}

    assert report["sampled_drafts"] == 2 and report["sampled_drafts_correct"] == 1
    assert report["sampled_programs"] == 16
    assert report["sampled_programs_correct"] == 4 and report["sampled_programs_wrong"] == 12
    assert report["sft_rows"] == len(sft) == 8 and report["sft_rows_sampled"] == 4
    assert report["dpo_rows"] == len(dpo) == 4 * 2 * 4  # prompts x correct programs x wrong ones
    # drafts in one call for the question, then every prompt's programs in one call
    assert scripted_generation == [(1, 2), (4, 4)]


def test_dpo_pairs_per_prompt_are_capped_the_same_way_for_the_same_seed(tmp_path, tiny_model_dir, scripted_generation):
    full = read_jsonl(build_natalia(tmp_path / "full", tiny_model_dir, max_pairs_per_prompt=100) / "dpo.jsonl")
    capped_dir = build_natalia(tmp_path / "capped", tiny_model_dir, max_pairs_per_prompt=2)
    capped = read_jsonl(capped_dir / "dpo.jsonl")
    per_prompt = {
        meta_id: sum(row["meta"]["id"] == meta_id for row in capped) for meta_id in {row["meta"]["id"] for row in full}
    }
    assert set(per_prompt.values()) == {2}  # each prompt has 2 correct x 4 wrong programs, capped to 2
    assert all(row in full for row in capped)
    report = json.loads((capped_dir / "report.json").read_text())
    assert report["dpo_pairs_over_cap"] == len(full) - len(capped)
    again = build_natalia(tmp_path / "again", tiny_model_dir, max_pairs_per_prompt=2)
    assert (again / "dpo.jsonl").read_text() == (capped_dir / "dpo.jsonl").read_text()


def test_cli_samples_from_a_real_model_and_the_counts_add_up(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    args = [
        "data",
        "build",
        "--input",
        str(TRAIN),
        "--limit",
        "2",
        "--output-dir",
        str(out),
        "--sampled-programs",
        "2",
        "--max-new-tokens",
        "6",
    ]
    assert cli_main([*args, "--sample-model", tiny_model_dir]) == 0
    report = json.loads((out / "report.json").read_text())
    sft, dpo = read_jsonl(out / "sft.jsonl"), read_jsonl(out / "dpo.jsonl")
    prompts = {row["meta"]["id"] for row in sft}
    assert report["sampled_drafts"] == report["verified_questions"] == 2
    assert report.get("drafts_sampled", 0) == 2 - report.get("sampled_drafts_blank", 0)
    assert len(prompts) == sum(count for key, count in report.items() if key.startswith("drafts_"))
    assert report["sampled_programs"] == 2 * len(prompts)
    assert report["sampled_programs"] == report["sampled_programs_correct"] + report["sampled_programs_wrong"]
    assert report["sft_rows"] == len(sft) and report["dpo_rows"] == len(dpo)
    for row in dpo:
        assert ran_to_gold(row["chosen"], row["meta"]["gold"]) and not ran_to_gold(row["rejected"], row["meta"]["gold"])

    assert cli_main([*args, "--sample-model", str(tmp_path / "no-such-model")]) == 2
    assert "not found" in capsys.readouterr().err
