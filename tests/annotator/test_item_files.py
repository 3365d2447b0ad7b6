"""Loading item files: GSM8K drafts, CSV, precomputed refinements, and every kind of bad file."""

from __future__ import annotations

import json

import pytest

from cap_app.annotate.item_files import MAX_LINE_BYTES, BatchError, allowed_batch_path, load_batch
from cap_app.engine.inputs import MAX_DRAFT_CHARS
from tests.annotator.conftest import QUESTION, RIGHT_PROGRAM, WRONG_PROGRAM, write_jsonl
from tests.helpers.paths import DRAFTS_DEV


def test_gsm8k_drafts_load_with_a_named_draft_source_and_gold_extracted(store):
    report = load_batch(store, DRAFTS_DEV, draft_key="175b_verification")
    assert (report.batch.item_count, report.batch.error_count, report.reused) == (200, 0, False)
    first = store.item_at(report.batch.id, 0)
    source = json.loads(DRAFTS_DEV.read_text(encoding="utf-8").splitlines()[0])
    assert first.question == source["question"]
    assert first.draft == source["175b_verification"]["solution"].strip()
    assert first.gold == "18"  # from "...\nA: 18"
    assert store.refinements(first.id) == []


def test_the_same_file_again_reuses_the_batch_and_its_judgements(store, refinements_file):
    first = load_batch(store, refinements_file)
    again = load_batch(store, refinements_file, name="renamed.jsonl")
    assert again.reused and again.batch == first.batch
    assert "already loaded" in again.summary()
    other_key = load_batch(store, DRAFTS_DEV, draft_key="6b_finetuning")
    assert other_key.batch.id != first.batch.id


def test_refine_output_lines_load_as_items_with_their_refinements(store, refinements_file):
    report = load_batch(store, refinements_file)
    assert report.batch.item_count == 2  # the two refinements of the same question and draft share an item
    janet = store.item_at(report.batch.id, 0)
    assert janet.question == QUESTION and janet.gold == "18"
    assert [r.result.program for r in store.refinements(janet.id)] == [RIGHT_PROGRAM, WRONG_PROGRAM]


def test_csv_with_draft_and_gold_columns(store, tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text(
        'question,draft,gold\n"What is 2+2?","2+2=4\nA: 4",4\nWhat is 3*3?,3*3=9,#### 9\n', encoding="utf-8"
    )
    report = load_batch(store, path)
    assert report.batch.item_count == 2 and report.batch.error_count == 0
    first, second = store.item_at(report.batch.id, 0), store.item_at(report.batch.id, 1)
    assert (first.draft, first.gold, first.line) == ("2+2=4\nA: 4", "4", 2)
    assert (second.gold, second.line) == ("9", 4)  # the first record spans lines 2-3


def test_malformed_jsonl_rows_are_reported_with_line_numbers_and_the_rest_loads(store, tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = {"question": "What is 2+2?", "draft": "2+2=4"}
    lines = [
        json.dumps(good).encode(),  # 1 ok
        b'{"question": "broken", "draft": ',  # 2 bad JSON
        json.dumps({"draft": "no question"}).encode(),  # 3 missing question
        json.dumps({"question": "q", "6b_finetuning": {"solution": "s"}}).encode(),  # 4 no 'draft'
        b"",  # 5 blank: skipped silently
        b"\xff\xfe\x00junk\x81",  # 6 binary junk
        json.dumps([1, 2]).encode(),  # 7 not an object
        json.dumps({"question": "q", "draft": "d", "candidates": "nope"}).encode(),  # 8 broken refinement
        json.dumps({**good, "question": "What is 3+3?"}).encode(),  # 9 ok
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = load_batch(store, path)
    errors = dict(report.batch.errors)
    assert report.batch.item_count == 2
    assert sorted(errors) == [2, 3, 4, 6, 7, 8]
    assert errors[2].startswith("not valid JSON")
    assert errors[3] == "missing 'question'"
    assert errors[4] == "missing 'draft' (drafts in this record: 6b_finetuning; choose one as the draft key)"
    assert errors[6] == "not UTF-8 text"
    assert errors[7] == "expected a JSON object, found list"
    assert errors[8].startswith("not a refinement result")
    summary = report.summary()
    assert "6 malformed rows skipped" in summary and "- line 6: not UTF-8 text" in summary


def test_an_over_long_line_is_skipped_without_reading_it_whole(store, tmp_path):
    path = tmp_path / "long.jsonl"
    huge = json.dumps({"question": "x" * (MAX_LINE_BYTES + 10), "draft": "d"})
    path.write_text(huge + "\n" + json.dumps({"question": "q", "draft": "d"}) + "\n", encoding="utf-8")
    report = load_batch(store, path)
    assert report.batch.item_count == 1
    assert report.batch.errors == [(1, "line is longer than 1 MiB")]


def test_csv_without_a_question_column_is_refused_at_line_1(store, tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("prompt,response\nWhat is 2+2?,4\n", encoding="utf-8")
    with pytest.raises(BatchError, match="line 1: the CSV header needs a 'question' column"):
        load_batch(store, path)
    assert store.list_batches() == []


def test_csv_rows_with_wrong_field_counts_or_junk_are_reported(store, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"question,draft\nq1,d1\nq2,d2,extra\nq3\n\xc3\x28,bad utf8\nq4,\nq5,d5\n")
    report = load_batch(store, path)
    assert report.batch.item_count == 2
    assert report.batch.errors == [
        (3, "expected 2 fields, found 3"),
        (4, "expected 2 fields, found 1"),
        (5, "not UTF-8 text"),
        (6, "empty draft 'draft'"),
    ]


def test_rows_are_read_as_the_engine_reads_them(store, tmp_path):
    """The annotator refines what it loads, so a row the engine would refuse is refused at load (the
    loader's own limit was 20,000 characters); a blank draft is refused too: nothing to judge."""
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            {"question": "q", "draft": "x" * (MAX_DRAFT_CHARS + 1)},
            {"question": "q", "draft": "d\x1b[31m"},
            {"question": "q", "draft": "   "},
            {"question": " What is 3 + 4? ", "draft": " 3 + 4 = 7 ", "gold": "", "answer": "#### 7"},
        ],
    )
    report = load_batch(store, path)
    assert report.batch.errors == [
        (1, "the draft is too long (8,001 characters; the limit is 8,000)"),
        (2, "the draft contains control characters; paste plain text"),
        (3, "empty draft 'draft'"),
    ]
    item = store.item_at(report.batch.id, 0)
    assert (item.question, item.draft, item.gold, item.line) == ("What is 3 + 4?", "3 + 4 = 7", "7", 4)


def test_a_binary_file_is_refused_whole(store, tmp_path):
    path = tmp_path / "image.jsonl"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(BatchError, match="binary file"):
        load_batch(store, path)


def test_a_file_with_no_valid_row_is_refused_and_nothing_is_stored(store, tmp_path):
    path = write_jsonl(tmp_path / "none.jsonl", [{"question": "q"}])
    with pytest.raises(BatchError, match=r"no valid rows \(1 malformed; line 1: missing 'draft'\)"):
        load_batch(store, path)
    assert store.list_batches() == []


def test_the_report_shows_an_uploaded_file_name_as_plain_text(store, tmp_path):
    path = write_jsonl(tmp_path / "[x](javascript:alert(1))<img>.jsonl", [{"question": "q", "draft": "d"}])
    assert load_batch(store, path).summary() == (
        "**\\[x\\]\\(javascript:alert\\(1\\)\\)\\<img\\>\\.jsonl**: 1 item loaded."
    )


def test_unknown_draft_key_and_unreadable_file(store, tmp_path):
    with pytest.raises(BatchError, match="Unknown draft key"):
        load_batch(store, DRAFTS_DEV, draft_key="solution")
    with pytest.raises(BatchError, match="Cannot read missing.jsonl"):
        load_batch(store, tmp_path / "missing.jsonl")


def test_paths_from_the_web_are_limited_to_allowed_folders(tmp_path):
    allowed = tmp_path / "batches"
    allowed.mkdir()
    inside = write_jsonl(allowed / "b.jsonl", [{"question": "q", "draft": "d"}])
    outside = write_jsonl(tmp_path / "secret.jsonl", [{"question": "q", "draft": "d"}])
    (allowed / "link.jsonl").symlink_to(outside)
    assert allowed_batch_path(str(inside), [allowed]) == inside
    for path in (outside, allowed / "link.jsonl", allowed / ".." / "secret.jsonl"):
        with pytest.raises(BatchError, match="cannot be loaded"):
            allowed_batch_path(str(path), [allowed])
    with pytest.raises(BatchError, match="cannot be loaded"):
        allowed_batch_path(str(allowed / "nope.jsonl"), [allowed])
