"""Load -> judge -> export round trip, the formats trl trains on, the CSV, and agreement."""

from __future__ import annotations

import csv
import json

import pytest

from cap_app.annotate.export import cohen_kappa, export, summarize
from cap_app.annotate.item_files import load_batch
from cap_app.cli import main as cli_main
from cap_app.engine.prompts import build_messages, format_completion, format_prompt
from tests.annotator.conftest import DRAFT, QUESTION, RIGHT_PROGRAM, WRONG_PROGRAM, make_result, write_jsonl


def judge_batch(store, path, verdicts: dict[str, list[str | None]]):
    """Load `path` and have each annotator judge the refinements in order ('yes', 'no', ...)."""
    batch = load_batch(store, path).batch
    refinements = [r for p in range(batch.item_count) for r in store.refinements(store.item_at(batch.id, p).id)]
    for annotator, labels in verdicts.items():
        for refinement, label in zip(refinements, labels, strict=False):
            if label is not None:
                store.judge(
                    refinement.id, annotator, correct=label, vs_draft="better", first_wrong_step=2, origin="api"
                )
    return batch


def test_round_trip_dpo_pairs_the_right_program_against_the_wrong_one(store, refinements_file, tmp_path):
    judge_batch(store, refinements_file, {"ann": ["yes", "no", "yes"]})
    summary = export(store, "dpo", tmp_path / "out" / "dpo.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out" / "dpo.jsonl").read_text().splitlines()]
    assert summary.rows_written == 1 and len(rows) == 1  # the 3*4 item has no wrong program to pair with
    assert rows[0] == {
        "prompt": build_messages(QUESTION, DRAFT),
        "chosen": [{"role": "assistant", "content": format_completion(RIGHT_PROGRAM)}],
        "rejected": [{"role": "assistant", "content": format_completion(WRONG_PROGRAM)}],
        "meta": {
            "question": QUESTION,
            "draft": DRAFT,
            "gold": "18",
            "source": "annotations",
            "judged_by": ["ann (api)"],
            "refiner": {  # what the refiner said of each program, beside the team's judgement
                "chosen": {"verdict": "disagrees", "program_answer": "18", "confidence": None},
                "rejected": {"verdict": "agrees", "program_answer": "26", "confidence": None},
            },
        },
    }


def test_with_a_tokenizer_the_prompt_is_exactly_the_engines_prompt_text(
    store, refinements_file, tmp_path, tiny_model_dir
):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    judge_batch(store, refinements_file, {"ann": ["yes", "no", "yes"]})
    export(store, "dpo", tmp_path / "dpo.jsonl", tokenizer=tokenizer)
    [row] = [json.loads(line) for line in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    assert row["prompt"] == format_prompt(tokenizer, QUESTION, DRAFT)
    assert row["prompt"].endswith("<|im_start|>assistant\n")
    assert (row["chosen"], row["rejected"]) == (format_completion(RIGHT_PROGRAM), format_completion(WRONG_PROGRAM))


def test_kto_rows_carry_one_label_per_judged_program(store, refinements_file, tmp_path):
    judge_batch(store, refinements_file, {"ann": ["yes", "no", "unsure"]})
    export(store, "kto", tmp_path / "kto.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "kto.jsonl").read_text().splitlines()]
    assert [(row["completion"][0]["content"], row["label"]) for row in rows] == [
        (format_completion(RIGHT_PROGRAM), True),
        (format_completion(WRONG_PROGRAM), False),
    ]  # unsure left out
    assert all(row["prompt"] == build_messages(QUESTION, DRAFT) for row in rows)


def test_conflicting_judgements_are_left_out_and_counted(store, refinements_file, tmp_path):
    judge_batch(store, refinements_file, {"ann": ["yes", "no", "yes"], "bob": ["no", "no", "yes"]})
    summary = export(store, "dpo", tmp_path / "dpo.jsonl")
    assert summary.rows_written == 0  # the right program is contested, so there is no clean pair
    assert summary.conflicts == 1 and summary.labeled_programs == 2


def test_csv_has_every_current_judgement_and_defuses_formulas(store, tmp_path):
    path = write_jsonl(
        tmp_path / "b.jsonl", [make_result("print(1)", "1", question='=HYPERLINK("x")', draft="-1 + 2 = 1").to_dict()]
    )
    judge_batch(store, path, {"ann": ["yes"], "bob": ["no"]})
    summary = export(store, "csv", tmp_path / "all.csv")
    with open(tmp_path / "all.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert summary.rows_written == 2
    assert [(r["annotator"], r["origin"], r["correct"], r["vs_draft"], r["first_wrong_step"]) for r in rows] == [
        ("ann", "api", "yes", "better", "2"),
        ("bob", "api", "no", "better", "2"),
    ]
    assert rows[0]["question"] == '\'=HYPERLINK("x")' and rows[0]["draft"] == "'-1 + 2 = 1"
    assert rows[0]["program"] == "print(1)" and rows[0]["item"] == "1"


@pytest.mark.parametrize("note", ["-inf", "+nan", "-1_000", "-5", "＝1+1", "＋1", "－1", "＠SUM(A1)"])
def test_csv_quotes_every_text_cell_a_spreadsheet_reads_as_a_formula(store, refinements_file, tmp_path, note):
    batch = load_batch(store, refinements_file).batch
    store.judge(store.refinements(store.item_at(batch.id, 0).id)[0].id, "ann", correct="yes", note=note)
    export(store, "csv", tmp_path / "all.csv")
    with open(tmp_path / "all.csv", newline="", encoding="utf-8") as fh:
        [row] = list(csv.DictReader(fh))
    assert row["note"] == "'" + note  # number-like text too (OWASP); numeric columns stay numbers
    assert row["item"] == "1"


def test_undone_judgements_are_not_exported(store, refinements_file, tmp_path):
    judge_batch(store, refinements_file, {"ann": ["yes", "no", None]})
    store.undo_last("ann")
    assert export(store, "dpo", tmp_path / "dpo.jsonl").rows_written == 0


def test_cohen_kappa_matches_the_textbook_example():
    # 50 items: both yes 20, a yes / b no 5, a no / b yes 10, both no 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["yes", "no"], ["yes", "no"]) == pytest.approx(1.0)
    assert cohen_kappa(["yes", "yes"], ["yes", "yes"]) is None  # undefined, not a fake 1.0


def test_summary_reports_kappa_of_annotators_on_shared_refinements(store, refinements_file):
    judge_batch(store, refinements_file, {"ann": ["yes", "no", "yes"], "bob": ["yes", "no", "no"], "cy": ["no"]})
    summary = summarize(store)
    correct = {(a.annotator_a, a.annotator_b): a for a in summary.agreements if a.field == "correct"}
    assert (correct[("ann", "bob")].shared, correct[("ann", "cy")].shared) == (3, 1)
    # ann yes,no,yes vs bob yes,no,no: p_o = 2/3, p_e = (2*1 + 1*2)/9 = 4/9 -> kappa 0.4
    assert correct[("ann", "bob")].kappa == pytest.approx(0.4)
    assert "Cohen's kappa ann vs bob on 'correct' (3 shared): 0.400" in summary.text()
    assert summary.label_counts["bob"]["no"] == 2


def test_exported_rows_load_with_datasets_and_trl_dpo_trains_on_them(store, refinements_file, tmp_path, tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    judge_batch(store, refinements_file, {"ann": ["yes", "no", "yes"]})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    export(store, "dpo", tmp_path / "messages.jsonl")
    export(store, "dpo", tmp_path / "text.jsonl", tokenizer=tokenizer)
    for name in ("messages.jsonl", "text.jsonl"):
        dataset = Dataset.from_json(str(tmp_path / name), cache_dir=str(tmp_path / "hf-cache"))
        assert dataset.column_names == ["prompt", "chosen", "rejected", "meta"] and len(dataset) == 1
        args = DPOConfig(
            output_dir=str(tmp_path / "dpo-run"),
            max_steps=1,
            per_device_train_batch_size=1,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            use_cpu=True,
            dataloader_num_workers=0,
            max_length=2048,
        )  # the tiny tokenizer is one token per byte
        trainer = DPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        prepared = trainer.train_dataset[0]
        prompt_text = format_prompt(tokenizer, QUESTION, DRAFT)
        assert tokenizer.decode(prepared["prompt_ids"]) == prompt_text
        assert tokenizer.decode(prepared["chosen_ids"]).startswith(format_completion(RIGHT_PROGRAM))
        assert tokenizer.decode(prepared["rejected_ids"]).startswith(format_completion(WRONG_PROGRAM))
        if name == "messages.jsonl":  # one training step is enough to show the rows train
            result = trainer.train()
            assert result.global_step == 1 and result.training_loss > 0


def test_the_projects_dpo_training_reads_the_export_as_its_own_data(store, refinements_file, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from cap_app.train.common import answer_text, prompt_text, read_rows

    judge_batch(store, refinements_file, {"ann": ["yes", "no", "yes"]})
    export(store, "dpo", tmp_path / "dpo.jsonl")
    [row] = read_rows(str(tmp_path / "dpo.jsonl"), None, required=("prompt", "chosen", "rejected"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert prompt_text(tokenizer, row) == format_prompt(tokenizer, QUESTION, DRAFT)
    assert answer_text(row["rejected"]) == format_completion(WRONG_PROGRAM)


def test_export_command_writes_the_file_and_prints_the_summary(store, refinements_file, tmp_path, capsys):
    judge_batch(store, refinements_file, {"ann": ["yes", "no", "yes"], "bob": ["yes", "no", "yes"]})
    output = tmp_path / "kto.jsonl"
    assert cli_main(["export", "--db", str(store.path), "--format", "kto", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 3 rows to {output}" in printed
    assert "Cohen's kappa ann vs bob on 'correct' (3 shared): 1.000" in printed
    assert len(output.read_text().splitlines()) == 3


def test_export_command_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["export", "--db", str(tmp_path / "none.db"), "--output", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no annotation database at {tmp_path / 'none.db'}"
    with pytest.raises(SystemExit):
        cli_main(["export", "--format", "parquet", "--output", "x"])
