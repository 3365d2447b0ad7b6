"""The page's state is checked, never trusted: a judgement names the item it is of (`shown`), and
that must be an item of a complete batch this session has open. No call, and no crash between
calls, leaves a file that cannot be loaded again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cap_app.annotate.item_files import load_batch
from cap_app.annotate.store import StoreError
from cap_app.ui import annotate_handlers as handlers
from cap_app.ui.annotate_sessions import SessionOrder
from tests.annotator.conftest import RIGHT_PROGRAM, as_user, make_result, write_jsonl
from tests.annotator.test_annotator_tab import loaded
from tests.helpers.paths import ROOT


@pytest.fixture
def batch_file(tmp_path):
    rows = [make_result(RIGHT_PROGRAM, "18", question=f"Question {i}?").to_dict() for i in range(3)]
    return write_jsonl(tmp_path / "batch.jsonl", rows)


def judgements(store) -> list:
    with store._connect() as conn:
        return conn.execute("SELECT * FROM judgements").fetchall()


def test_a_forged_shown_state_is_refused_and_changes_nothing(store, batch_file, tmp_path):
    _, _, shown = loaded(store, batch_file)
    state = shown["state"]
    other = load_batch(store, write_jsonl(tmp_path / "other.jsonl", [make_result(RIGHT_PROGRAM, "18").to_dict()]))
    forged = [
        "{",
        "[1, 2]",
        '{"position": "0"}',
        json.dumps({"batch": state["batch"], "position": -1, "refinement": 0}),
        json.dumps({"batch": state["batch"], "position": 3, "refinement": 0}),  # past the last item
        json.dumps({"batch": state["batch"], "position": 0, "refinement": 1}),  # the item has one refinement
        json.dumps({"batch": other.batch.id, "position": 0, "refinement": 0}),  # not open in this session
        json.dumps({"batch": 99, "position": 0, "refinement": 0}),
        json.dumps({"batch": None, "position": 0, "refinement": 0}),
    ]
    for shown_value in forged:
        values = handlers.record_judgement(store, state, "yes", shown_value, as_user("ann"), field="correct")
        assert "Saved" not in values[0] and "refused" in values[0].lower(), (shown_value, values[0])
        assert json.loads(values[2])["correct"] is None  # the radio shows what is stored: nothing
    assert judgements(store) == []
    honest = handlers.record_judgement(store, state, "yes", shown["shown"], as_user("ann"), field="correct")
    assert "Saved: item 1" in honest[0]


def test_no_item_or_refinement_of_an_unfinished_import_can_be_judged_or_opened(store, batch_file):
    """A batch is hidden until every row is in; its id is guessable, so every call checks it."""
    with store._transaction() as conn:
        batch_id = conn.execute(
            "INSERT INTO batches (name, sha256, draft_key, item_count, errors, error_count, created_at, updated_at)"
            " VALUES ('half', 'x', 'draft', 0, '[]', 0, '', '')"
        ).lastrowid
    from cap_app.annotate.store import NewItem

    with store._transaction() as conn:
        from cap_app.annotate.store import _insert_item

        _insert_item(conn, batch_id, 0, NewItem(1, "q?", "d", None, (make_result(RIGHT_PROGRAM, "18"),)))
        refinement_id = conn.execute("SELECT id FROM refinements").fetchone()[0]
    state = handlers.new_state(batch_id)
    values = handlers.record_judgement(store, state, "yes", json.dumps(state), as_user("ann"), field="correct")
    assert "Saved" not in values[0]
    with pytest.raises(StoreError):
        store.judge(refinement_id, "ann", correct="yes")
    with pytest.raises(StoreError):
        store.item_at(batch_id, 0)
    opened = dict(
        zip(handlers.VIEW, handlers.open_batch(store, handlers.new_state(), batch_id, as_user("ann")), strict=True)
    )
    assert opened["state"]["batch"] is None and opened["question"] == ""
    assert judgements(store) == []


IMPORTER = """
import sys, time
from pathlib import Path
from cap_app.annotate.item_files import parse_items
from cap_app.annotate.store import Store

db, path, sha, ready = sys.argv[1:]

def rows():
    for number, item in enumerate(parse_items(Path(path), "draft", [])):
        if number == 2:
            Path(ready).touch()
            time.sleep(600)  # killed here, half way
        yield item

Store(db).add_batch("batch.jsonl", sha, "draft", rows(), [], chunk_rows=1)
"""


def test_a_judgement_forged_during_an_import_then_a_sigkill_leave_the_file_loadable_at_once(
    store, batch_file, tmp_path
):
    ready = tmp_path / "ready"
    sha = hashlib.sha256(batch_file.read_bytes()).hexdigest()
    importer = subprocess.Popen(
        [sys.executable, "-c", IMPORTER, str(store.path), str(batch_file), sha, str(ready)],
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert importer.poll() is None and time.monotonic() < deadline, "the import did not start"
            time.sleep(0.05)
        with store._connect() as conn:
            batch_id, complete = conn.execute("SELECT id, complete FROM batches").fetchone()
            refinement_id = conn.execute("SELECT MIN(id) FROM refinements").fetchone()[0]
        assert not complete
        forged = json.dumps({"batch": batch_id, "position": 0, "refinement": 0})
        assert (
            "Saved"
            not in handlers.record_judgement(
                store, handlers.new_state(batch_id), "no", forged, as_user("ann"), field="correct"
            )[0]
        )
        with pytest.raises(StoreError):
            store.judge(refinement_id, "ann", correct="no")
    finally:
        os.killpg(importer.pid, signal.SIGKILL)
        importer.wait(timeout=10)
    report = load_batch(store, batch_file)  # the restart's first Load: no wait, no FOREIGN KEY failure
    assert report.batch.item_count == 3 and not report.reused
    assert judgements(store) == []


def test_a_file_damaged_by_an_older_app_loads_at_once(store, batch_file):
    """Older versions let a judgement reach an unfinished import; such a file must still load."""
    from cap_app.annotate.store import NewItem, _insert_item

    sha = hashlib.sha256(batch_file.read_bytes()).hexdigest()
    with store._transaction() as conn:
        batch_id = conn.execute(
            "INSERT INTO batches (name, sha256, draft_key, item_count, errors, error_count, created_at, updated_at)"
            " VALUES ('batch.jsonl', ?, 'draft', 0, '[]', 0, '', '')",
            (sha,),
        ).lastrowid
        _insert_item(conn, batch_id, 0, NewItem(1, "Question 0?", "d", None, (make_result(RIGHT_PROGRAM, "18"),)))
        conn.execute(
            "INSERT INTO judgements (refinement_id, annotator, correct, note, created_at)"
            " SELECT id, 'ann', 'no', '', '' FROM refinements"
        )
    report = load_batch(store, batch_file)
    assert report.batch.item_count == 3 and not report.reused


def test_a_sessions_numbered_calls_run_in_key_order_whatever_order_they_arrive_in():
    order = SessionOrder(wait_s=60)
    ran: list[str] = []

    def call(session: str, number: int) -> None:
        with order.turn(session, number):
            ran.append(f"{session}{number}")

    import threading

    second = threading.Thread(target=call, args=("a", 2))  # arrives first, waits for number 1
    second.start()
    call("b", 1)  # another session's calls do not wait for "a"
    call(None, 5)  # nor do unnumbered ones (API clients)
    call("a", 1)
    second.join(60)
    assert ran == ["b1", "None5", "a1", "a2"]
