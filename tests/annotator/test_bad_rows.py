"""Rows a batch file may hold that the app once loaded but could not show, and CSV cells a
spreadsheet would run: each loads, shows and exports as text."""

from __future__ import annotations

import csv

import pytest

from cap_app.annotate.accounts import Identity
from cap_app.annotate.export import export
from cap_app.annotate.item_files import BatchError, allowed_batch_path, load_batch
from cap_app.ui import annotate_handlers as handlers
from cap_app.ui.annotate_handlers import VIEW
from tests.annotator.conftest import RIGHT_PROGRAM, make_result, write_jsonl


def numeric_row(answer: float, gold: float = 18, **fields) -> dict:
    """A `refine --output` line whose answer fields are JSON numbers, as a hand-edited or foreign file has them."""
    row = make_result(RIGHT_PROGRAM, str(answer), **fields).to_dict()
    row.update(gold=gold, draft_answer=26, refined_answer=answer, program_answer=answer)
    for candidate in row["candidates"]:
        candidate["answer"] = answer
        candidate["execution"]["answer"] = answer
    return row


def test_numeric_answer_fields_load_as_text_and_the_item_shows(store, tmp_path):
    path = write_jsonl(
        tmp_path / "numbers.jsonl",
        [numeric_row(-7), numeric_row(float("-inf"), gold=2.5, question="What is 2 + 0.5?", draft="2.5\nA: 2.5")],
    )
    report = load_batch(store, path)
    assert report.batch.item_count == 2 and report.batch.error_count == 0
    for position, (answer, gold) in enumerate((("-7", "18"), ("-inf", "2.5"))):
        item = store.item_at(report.batch.id, position)
        [stored] = store.refinements(item.id)
        result = stored.result
        assert (item.gold, result.gold, result.draft_answer) == (gold, gold, "26")
        assert (result.refined_answer, result.program_answer, result.candidates[0].execution.answer) == (answer,) * 3
        ann = Identity("ann", "annotator", "page")
        shown = dict(
            zip(VIEW, handlers.item_view(store, handlers.new_state(report.batch.id, position), ann), strict=True)
        )
        assert "Gold answer:</b> " + gold in shown["question"] and shown["verdict"]


def test_a_row_whose_answer_is_neither_text_nor_a_number_is_skipped_with_its_line(store, tmp_path):
    bad = numeric_row(-7)
    bad["refined_answer"] = {"value": -7}
    report = load_batch(store, write_jsonl(tmp_path / "mixed.jsonl", [bad, numeric_row(3, question="Three?")]))
    assert report.batch.item_count == 1
    assert report.batch.errors == [(1, "'refined_answer' must be text or a number")]


def csv_cells(store, tmp_path) -> dict:
    export(store, "csv", tmp_path / "all.csv")
    with open(tmp_path / "all.csv", newline="", encoding="utf-8") as fh:
        [row] = list(csv.DictReader(fh))
    return row


def test_number_valued_answers_reach_the_csv_as_guarded_text(store, tmp_path):
    batch = load_batch(store, write_jsonl(tmp_path / "n.jsonl", [numeric_row(-7, gold=-5)])).batch
    store.judge(store.refinements(store.item_at(batch.id, 0).id)[0].id, "ann", correct="yes", first_wrong_step=2)
    row = csv_cells(store, tmp_path)
    assert (row["refined_answer"], row["program_answer"], row["gold"], row["draft_answer"]) == (
        "'-7",
        "'-7",
        "'-5",
        "26",
    )
    assert (row["item"], row["line"], row["first_wrong_step"]) == ("1", "1", "2")  # numeric columns stay numbers


@pytest.mark.parametrize(
    "note",
    [
        '\ufeff=HYPERLINK("http://x")',
        "\u200b=1+1",
        "\u200b\ufeff+1",
        " =1+1",
        "\u00a0-1",
        "﹦1+1",
        "﹢1",
        "﹣1",
        "﹫SUM(A1)",
        "＝1+1",
        "\t=1",
        "\r=1",
    ],
)
def test_every_text_cell_is_guarded_whatever_comes_before_the_formula(store, refinements_file, tmp_path, note):
    batch = load_batch(store, refinements_file).batch
    store.judge(store.refinements(store.item_at(batch.id, 0).id)[0].id, "ann", correct="yes", note="x")
    with store._transaction() as conn:  # the store strips notes; a cell may still start with any of these
        conn.execute("UPDATE judgements SET note = ?", (note,))
    assert csv_cells(store, tmp_path)["note"] == "'" + note


def test_plain_text_cells_are_left_alone(store, refinements_file, tmp_path):
    batch = load_batch(store, refinements_file).batch
    store.judge(store.refinements(store.item_at(batch.id, 0).id)[0].id, "ann", correct="yes", note="fine = ok")
    assert csv_cells(store, tmp_path)["note"] == "fine = ok"


def test_a_refused_path_names_no_server_folder_and_does_not_tell_whether_the_file_exists(tmp_path):
    allowed = tmp_path / "batches"
    allowed.mkdir()
    (allowed / "sub").mkdir()
    write_jsonl(tmp_path / "secret.jsonl", [{"question": "q", "draft": "d"}])
    messages = set()
    for path in (tmp_path / "secret.jsonl", tmp_path / "missing.jsonl", allowed / "missing.jsonl", allowed / "sub"):
        with pytest.raises(BatchError) as refused:
            allowed_batch_path(str(path), [allowed])
        messages.add(str(refused.value).replace(str(path), "PATH"))
    [message] = messages  # one answer whatever the file and folder
    assert str(tmp_path) not in message and "batches" not in message
