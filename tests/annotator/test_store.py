"""The SQLite store: schema versioning, judgement snapshots and undo, progress, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time

import pytest

from cap_app.annotate import store as store_module
from cap_app.annotate.store import NewItem, Store, StoreError, default_db_path
from tests.annotator.conftest import DRAFT, QUESTION, RIGHT_PROGRAM, WRONG_PROGRAM, make_result


def add_items(store: Store, n: int = 3, *, name: str = "batch"):
    items = [
        NewItem(
            line=i + 1,
            question=f"{QUESTION} ({i})",
            draft=DRAFT,
            gold="18",
            refinements=(make_result(RIGHT_PROGRAM, "18"),),
        )
        for i in range(n)
    ]
    batch, created = store.add_batch(name, f"sha-{name}", "draft", iter(items), [(9, "not valid JSON")])
    assert created
    return batch


def test_new_database_is_wal_and_at_the_latest_schema_version(tmp_path):
    store = Store(tmp_path / "sub" / "a.db")
    assert store.schema_version() == len(store_module.MIGRATIONS)
    with sqlite3.connect(tmp_path / "sub" / "a.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def old_database(path, monkeypatch, version: int, result) -> int:
    """A database file as the app at schema `version` left it: one batch, one item, one refinement
    (written with SQL, as today's inserts need today's columns); returns the batch id."""
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:version])
        Store(path)
    now = "2026-01-01T00:00:00+00:00"
    with sqlite3.connect(path) as conn:
        batch_id = conn.execute(
            """INSERT INTO batches (name, sha256, draft_key, item_count, errors, error_count, created_at,
               updated_at, complete) VALUES ('old', 'sha-old', 'draft', 1, '[]', 0, ?, ?, 1)""",
            (now, now),
        ).lastrowid
        item_id = conn.execute(
            """INSERT INTO items (batch_id, position, line, key, question, draft, gold)
               VALUES (?, 0, 1, 'k', ?, ?, '18')""",
            (batch_id, QUESTION, DRAFT),
        ).lastrowid
        conn.execute(
            "INSERT INTO refinements (item_id, source, result, created_at) VALUES (?, 'file', ?, ?)",
            (item_id, json.dumps(result.to_dict()), now),
        )
    return batch_id


def test_old_database_is_migrated_in_place(tmp_path, monkeypatch):
    path = tmp_path / "a.db"
    batch_id = old_database(path, monkeypatch, 1, make_result(RIGHT_PROGRAM, "18"))
    extra = ("ALTER TABLE batches ADD COLUMN owner TEXT",)
    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS[:1], extra))
    upgraded = Store(path)
    assert upgraded.schema_version() == 2
    assert upgraded.batch(batch_id).item_count == 1  # data kept
    with sqlite3.connect(path) as conn:
        assert "owner" in [row[1] for row in conn.execute("PRAGMA table_info(batches)")]


def test_a_version_2_file_gains_each_refinements_verdict_answers_and_confidence(tmp_path, monkeypatch):
    """Migration 3 reads the triage columns out of the stored results, as new rows get them."""
    from cap_app.engine.triage import confidence

    path = tmp_path / "a.db"
    old = make_result(WRONG_PROGRAM, "18")
    old.candidates[0].logprob = -0.25
    batch_id = old_database(path, monkeypatch, 2, old)
    store = Store(path)
    assert store.schema_version() == len(store_module.MIGRATIONS)
    fresh = store.add_refinement(store.item_at(batch_id, 0).id, old)
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT verdict, program_answer, draft_answer, confidence FROM refinements ORDER BY id"
        ).fetchall()
    expected = (old.verdict, old.program_answer, old.draft_answer, pytest.approx(confidence(old)))
    assert old.program_answer is not None and confidence(old) is not None
    assert [tuple(row) for row in rows] == [expected, expected]
    assert fresh.id == 2


def test_database_from_a_newer_app_is_refused(tmp_path):
    path = tmp_path / "a.db"
    Store(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(path)


def test_a_file_that_is_not_a_database_is_refused_with_a_message(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 100)
    with pytest.raises(StoreError, match="Cannot use .*notes.txt as the annotation database"):
        Store(path)


def test_a_writer_that_waits_too_long_gets_a_message_not_a_crash(store):
    batch = add_items(store, 1)
    refinement = store.refinements(store.item_at(batch.id, 0).id)[0]
    impatient = Store(store.path, busy_timeout_s=0.1)
    with sqlite3.connect(store.path, isolation_level=None) as other:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreError, match="The annotation database is busy"):
            impatient.judge(refinement.id, "ann", correct="yes")
        other.execute("ROLLBACK")
    assert impatient.judge(refinement.id, "ann", correct="yes").correct == "yes"


def test_default_path_env_then_spaces_storage_then_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("CAP_DB_PATH", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"
    monkeypatch.delenv("CAP_DB_PATH")
    data = tmp_path / "data"
    assert default_db_path(str(data)).name == "annotations.db" and default_db_path(str(data)).parent.name == ""
    data.mkdir()
    assert default_db_path(str(data)) == data / "annotations.db"


def test_batch_items_and_errors_round_trip(store):
    batch = add_items(store, 3)
    assert (batch.item_count, batch.error_count, batch.errors) == (3, 1, [(9, "not valid JSON")])
    assert store.find_batch("sha-batch", "draft") == batch
    assert store.find_batch("sha-batch", "6b_finetuning") is None
    item = store.item_at(batch.id, 2)
    assert item.question.endswith("(2)") and item.line == 3
    [refinement] = store.refinements(item.id)
    assert refinement.source == "file" and refinement.result.program == RIGHT_PROGRAM
    with pytest.raises(StoreError, match="no item 4"):
        store.item_at(batch.id, 3)


def test_repeated_question_and_draft_become_one_item_with_several_refinements(store):
    rows = [
        NewItem(1, QUESTION, DRAFT, "18", (make_result(RIGHT_PROGRAM, "18"),)),
        NewItem(2, QUESTION, DRAFT, "18", (make_result(WRONG_PROGRAM, "26"),)),
    ]
    batch, _ = store.add_batch("b", "sha", "draft", iter(rows), [])
    assert batch.item_count == 1
    programs = [r.result.program for r in store.refinements(store.item_at(batch.id, 0).id)]
    assert programs == [RIGHT_PROGRAM, WRONG_PROGRAM]


def test_an_import_reads_rows_outside_its_write_transactions_so_judges_are_not_blocked(store):
    judged = add_items(store, 1, name="first")
    refinement = store.refinements(store.item_at(judged.id, 0).id)[0]
    impatient = Store(store.path, busy_timeout_s=0.2)
    saved = []

    def rows():
        for i in range(50):
            if i == 25:  # half way through the import, another annotator judges
                saved.append(impatient.judge(refinement.id, "bob", correct="yes"))
            yield NewItem(i + 1, f"q{i}", "d")

    batch, created = store.add_batch("big", "sha-big", "draft", rows(), [], chunk_rows=10)
    assert created and batch.item_count == 50 and saved[0].correct == "yes"


def test_a_failed_import_leaves_nothing(store):
    def rows():
        yield NewItem(1, "q1", "d")
        raise ValueError("parser gave up")

    with pytest.raises(ValueError):
        store.add_batch("bad", "sha-bad", "draft", rows(), [], chunk_rows=1)
    assert store.list_batches() == [] and store.find_batch("sha-bad", "draft") is None
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0


def test_sessions_loading_the_same_new_file_at_once_all_get_its_one_batch(store):
    started = threading.Event()

    def rows():
        started.set()
        for i in range(20):
            time.sleep(0.01)  # a slow import: the other sessions arrive while it runs
            yield NewItem(i + 1, f"q{i}", "d")

    results, failures = [], []

    def load(items):
        try:
            results.append(Store(store.path).add_batch("same", "sha-same", "draft", items, [], chunk_rows=5))
        except StoreError as error:
            failures.append(str(error))

    first = threading.Thread(target=load, args=(rows(),))
    first.start()
    started.wait()
    others = [threading.Thread(target=load, args=(rows(),)) for _ in range(5)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join()
    assert failures == []
    assert len({batch.id for batch, _ in results}) == 1 and sorted(new for _, new in results) == [False] * 5 + [True]
    assert results[0][0].item_count == 20


def _import_forever(path: str, started) -> None:
    def rows():
        yield NewItem(1, "q1", "d")
        started.set()
        time.sleep(600)  # killed here, half way through the import
        yield NewItem(2, "q2", "d")

    Store(path).add_batch("big", "sha-big", "draft", rows(), [], chunk_rows=1)


def test_a_file_whose_import_was_killed_loads_again_at_once(store):
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    child = ctx.Process(target=_import_forever, args=(str(store.path), started))
    child.start()
    assert started.wait(60)
    child.kill()
    child.join()
    with sqlite3.connect(store.path) as conn:  # the dead import left its unfinished batch behind
        assert conn.execute("SELECT COUNT(*) FROM batches WHERE NOT complete").fetchone()[0] == 1
    began = time.monotonic()
    batch, created = store.add_batch("big", "sha-big", "draft", iter([NewItem(1, "q", "d")]), [])
    assert created and batch.item_count == 1 and time.monotonic() - began < 5
    assert [b.name for b in store.list_batches()] == ["big"]


def test_judgement_snapshots_undo_brings_the_previous_one_back(store):
    batch = add_items(store, 1)
    refinement = store.refinements(store.item_at(batch.id, 0).id)[0]
    first = store.judge(refinement.id, "ann", correct="yes")
    second = store.judge(
        refinement.id, " ann ", correct="yes", vs_draft="better", first_wrong_step=2, note=" off by 4 "
    )
    assert store.current_judgement(refinement.id, "ann") == second
    assert (second.first_wrong_step, second.note) == (2, "off by 4")
    assert (
        store.judge(refinement.id, "ann", correct="yes", vs_draft="better", first_wrong_step=2, note="off by 4")
        == second
    )  # unchanged form: no new snapshot
    assert store.undo_last("ann") == second
    assert store.current_judgement(refinement.id, "ann") == first
    assert store.undo_last("ann") == first
    assert store.current_judgement(refinement.id, "ann") is None
    assert store.undo_last("ann") is None


def test_empty_form_is_not_a_judgement(store):
    batch = add_items(store, 1)
    refinement = store.refinements(store.item_at(batch.id, 0).id)[0]
    assert store.judge(refinement.id, "ann") is None
    assert store.progress(batch.id, "ann") == (0, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(annotator=""), "annotator name"),
        (dict(annotator="x" * 81), "longer than 80"),
        (dict(correct="maybe"), "yes, no, unsure"),
        (dict(vs_draft="much better"), "better, same, worse"),
        (dict(first_wrong_step=0), "1 or more"),
        (dict(first_wrong_step=1.5), "whole step number"),
        (dict(note="x" * 5001), "longer than 5000"),
    ],
)
def test_bad_judgements_are_refused_with_a_message(store, kwargs, message):
    batch = add_items(store, 1)
    refinement = store.refinements(store.item_at(batch.id, 0).id)[0]
    args = {"annotator": "ann", "correct": "yes", **kwargs}
    with pytest.raises(StoreError, match=message):
        store.judge(refinement.id, args.pop("annotator"), **args)


def test_progress_and_next_unjudged_are_per_annotator_and_wrap(store):
    batch = add_items(store, 4)
    ids = [store.refinements(store.item_at(batch.id, p).id)[0].id for p in range(4)]
    store.judge(ids[1], "ann", correct="no")
    store.judge(ids[3], "ann", vs_draft="worse")  # no verdict yet: still unjudged
    assert store.progress(batch.id, "ann") == (1, 4)
    assert store.progress(batch.id, "bob") == (0, 4)
    assert store.next_unjudged(batch.id, "ann", 0) == 2
    assert store.next_unjudged(batch.id, "ann", 3) == 0
    assert [row.judged for row in store.items_page(batch.id, "ann", 0, 10)] == [False, True, False, False]
    assert [row.item.position for row in store.items_page(batch.id, "ann", 2, 10)] == [2, 3]
    for i in (0, 2, 3):
        store.judge(ids[i], "ann", correct="unsure")
    assert store.next_unjudged(batch.id, "ann", 0) is None


def _judge_many(path: str, annotator: str, refinement_ids: list[int]) -> None:
    store = Store(path)
    for i, refinement_id in enumerate(refinement_ids):
        store.judge(refinement_id, annotator, correct="yes" if i % 2 else "no", note=f"{annotator} {i}")


def test_several_threads_and_processes_write_at_once_and_nothing_is_lost(store):
    batch = add_items(store, 10)
    ids = [store.refinements(store.item_at(batch.id, p).id)[0].id for p in range(10)]
    threads = [threading.Thread(target=_judge_many, args=(store.path, f"thread{t}", ids)) for t in range(3)]
    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=_judge_many, args=(str(store.path), f"process{p}", ids)) for p in range(2)]
    for worker in [*threads, *processes]:
        worker.start()
    for worker in [*threads, *processes]:
        worker.join(timeout=60)
    assert all(p.exitcode == 0 for p in processes)
    judged = {(row.judgement.annotator, row.refinement.id) for row in store.current_judgements()}
    annotators = [f"thread{t}" for t in range(3)] + [f"process{p}" for p in range(2)]
    assert judged == {(a, r) for a in annotators for r in ids}
