"""Refine all (cap_app.annotate.batch_refinement): a batch refined in the background, stopped, resumed,
killed and resumed by the next process, sharing the model with interactive refinements, started
by admins only. The model is the slow stub backend (tests/helpers/slow_backend.py) except in the
last test, which runs the real offline default through the app's own resume at start."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from cap_app.annotate import batch_refinement
from cap_app.annotate.accounts import Identity, Refused
from cap_app.annotate.store import NewItem, Store, StoreError
from cap_app.backends import BackendError, priority
from cap_app.engine.inputs import RefineItem
from cap_app.engine.refine import refine_stream
from cap_app.ui.hosting import model_choices
from tests import test_clean_stop
from tests.annotator.conftest import DRAFT, QUESTION, RIGHT_PROGRAM, as_user, make_result
from tests.helpers.paths import ROOT
from tests.helpers.slow_backend import SlowBackend

ADMIN = Identity("lead", "admin", "page")
ANNOTATOR = Identity("ann", "annotator", "page")
SETTINGS = batch_refinement.JobSettings()


def make_batch(store: Store, count: int, *, refined: tuple[int, ...] = ()) -> int:
    """A batch of `count` distinct items (each question numbered); those at `refined` come with a
    refinement from the file, as `refine --output` lines would."""
    items = []
    for i in range(count):
        question = f"{QUESTION} (item {i})"
        results = (make_result(RIGHT_PROGRAM, "18", question=question),) if i in refined else ()
        items.append(NewItem(i + 1, question, DRAFT, "18", results))
    batch, _ = store.add_batch("fixture", f"sha-{count}-{refined}", "draft", items, [])
    return batch.id


def sources(store: Store, batch_id: int) -> list[list[str]]:
    """Each item's refinement sources, in item order."""
    count = store.batch(batch_id).item_count
    return [[r.source for r in store.refinements(store.item_at(batch_id, i).id)] for i in range(count)]


def positions(started: list[str]) -> list[int]:
    """The item numbers of the conversations a backend started, in order."""
    return [int(re.search(r"\(item (\d+)\)", text).group(1)) for text in started]


def until(condition, what: str, timeout_s: float = 60.0) -> None:
    """Wait for another thread or process to reach a state (a synchronisation, not a timing)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_refine_all_refines_each_item_without_a_refinement_and_stores_it_as_batch(store):
    batch_id = make_batch(store, 4, refined=(1,))
    assert batch_refinement.progress(store, batch_id).state is None
    backend = SlowBackend()
    batch_refinement.start(store, batch_id, ADMIN, SETTINGS, backend=backend)
    assert batch_refinement.wait(batch_id, 60)
    assert sources(store, batch_id) == [["batch"], ["file"], ["batch"], ["batch"]]
    assert positions(backend.started) == [0, 2, 3]
    stored = store.refinements(store.item_at(batch_id, 0).id)[0].result
    assert stored.refined_answer == "18" and stored.model == "slow stub"
    progress = batch_refinement.progress(store, batch_id)
    assert (progress.state, progress.done, progress.total, progress.seconds_left) == ("done", 4, 4, None)
    assert progress.items_per_s > 0
    assert batch_refinement.progress_line(store, batch_id).startswith("Refine all is done: 4 / 4 items refined")


def test_an_item_that_cannot_be_refined_is_skipped_and_named_when_the_job_is_done(store):
    batch_id = make_batch(store, 3)
    backend = SlowBackend(too_long="(item 1)")  # its prompt leaves the model no room for a program
    batch_refinement.start(store, batch_id, ADMIN, SETTINGS, backend=backend)
    assert batch_refinement.wait(batch_id, 60)
    assert sources(store, batch_id) == [["batch"], [], ["batch"]]
    progress = batch_refinement.progress(store, batch_id)
    assert progress.state == "done" and progress.done == 2
    assert progress.error.startswith("1 item could not be refined (2; item 2: the question and draft take 8,192 tokens")
    assert batch_refinement.progress_line(store, batch_id).endswith(progress.error)


class LostServer(SlowBackend):
    """The first generation works; then the (openai) server is gone."""

    def generate_stream(self, conversations, config, *, cancel=None):
        if self.started:
            raise BackendError("the server at http://gpu:8000/v1 did not answer\n(after 4 retries)")
        yield from super().generate_stream(conversations, config, cancel=cancel)


def test_a_backend_failure_fails_the_job_with_its_reason_in_one_line_and_resume_goes_on(store):
    batch_id = make_batch(store, 3)
    batch_refinement.start(store, batch_id, ADMIN, SETTINGS, backend=LostServer())
    assert batch_refinement.wait(batch_id, 60)
    assert sources(store, batch_id) == [["batch"], [], []]
    assert batch_refinement.progress_line(store, batch_id) == (
        "Refine all failed: 1 / 3 items refined. the server at http://gpu:8000/v1 did not answer"
    )
    batch_refinement.resume(store, batch_id, ADMIN, backend=SlowBackend())
    assert batch_refinement.wait(batch_id, 60)
    assert sources(store, batch_id) == [["batch"]] * 3


def test_stop_cancels_the_item_in_flight_and_resume_refines_the_rest_with_the_stored_settings(store):
    batch_id = make_batch(store, 3)
    backend = SlowBackend(gate=threading.Event())
    batch_refinement.start(store, batch_id, ADMIN, SETTINGS, backend=backend)
    until(lambda: len(backend.started) == 1, "the first item to start")
    stopped = batch_refinement.stop(store, batch_id, ADMIN, wait_s=30)
    assert batch_refinement.wait(batch_id, 0)  # the worker ended: the cancelled item did not hold it
    assert stopped.state == "stopped" and stopped.done == 0  # the item in flight was cancelled, not stored
    assert sources(store, batch_id) == [[], [], []]
    assert "stopped" in batch_refinement.progress_line(store, batch_id)
    with pytest.raises(StoreError, match="not being refined"):
        batch_refinement.stop(store, batch_id, ADMIN)

    backend.gate.set()
    batch_refinement.resume(store, batch_id, ADMIN, backend=backend)
    assert batch_refinement.wait(batch_id, 60)
    assert sources(store, batch_id) == [["batch"], ["batch"], ["batch"]]
    assert positions(backend.started) == [0, 0, 1, 2]  # the cancelled item again, then the rest once each
    assert batch_refinement.progress(store, batch_id).state == "done"


def test_a_batch_deleted_while_it_is_refined_goes_with_its_job_and_the_worker_ends_quietly(store):
    batch_id = make_batch(store, 3)
    backend = SlowBackend(gate=threading.Event())
    batch_refinement.start(store, batch_id, ADMIN, SETTINGS, backend=backend)
    until(lambda: len(backend.started) == 1, "the first item to start")
    store.delete_batch(batch_id)
    backend.gate.set()  # the item in flight finishes after its batch is gone
    assert batch_refinement.wait(batch_id, 60)
    assert store.list_batches() == [] and store.refine_job(batch_id) is None
    assert batch_refinement.progress(store, batch_id).state is None
    assert len(backend.started) == 1  # nothing after the deletion


def test_a_server_killed_mid_batch_is_resumed_by_the_next_without_redoing_or_losing_items(tmp_path):
    db = tmp_path / "annotations.db"
    batch_id = make_batch(Store(db), 8)
    command = [sys.executable, "-m", "tests.helpers.refine_all_process", str(db), str(batch_id)]
    first = subprocess.Popen([*command, "start", "0.05"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        until(lambda: 3 <= sum(map(len, sources(Store(db), batch_id))), "three stored items")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = sources(Store(db), batch_id)
    stored_before = [i for i, found in enumerate(before) if found]
    assert 3 <= len(stored_before) < 8 and all(found == ["batch"] for found in before if found)
    assert Store(db).refine_job(batch_id).state == "running"  # as the killed server left it

    second = subprocess.run([*command, "resume", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    redone = positions(json.loads(second.stdout.splitlines()[-1]))
    assert sources(Store(db), batch_id) == [["batch"]] * 8  # none lost, none stored twice
    assert not set(redone) & set(stored_before)  # nothing stored before the kill was generated again
    assert sorted(redone) == [i for i in range(8) if i not in stored_before]
    assert Store(db).refine_job(batch_id).state == "done"


def test_an_interactive_refinement_runs_while_the_batch_waits_for_it(store):
    batch_id = make_batch(store, 2)
    backend = SlowBackend()
    with priority.interactive():
        batch_refinement.start(store, batch_id, ADMIN, SETTINGS, backend=backend)
        until(lambda: batch_refinement.progress(store, batch_id).waiting, "the batch to wait")
        assert "paused while someone refines interactively" in batch_refinement.progress_line(store, batch_id)
        events = list(refine_stream(RefineItem("What is 16 - 3 - 4, times 2?", DRAFT), backend=backend))
        assert events[-1].kind == "done" and events[-1].result.refined_answer == "18"
        assert backend.started[0].count("What is 16 - 3 - 4") == 1 and len(backend.started) == 1
        assert sources(store, batch_id) == [[], []]  # the batch started nothing meanwhile
    assert batch_refinement.wait(batch_id, 60)
    assert sources(store, batch_id) == [["batch"], ["batch"]]
    assert positions(backend.started[1:]) == [0, 1]
    assert backend.interactive_seen == [1, 0, 0]  # the probe was gated as interactive, the batch's items not


def test_the_refine_tabs_handler_marks_itself_interactive(monkeypatch):
    from cap_app.ui import refine_handlers

    seen = []

    def fake_run(item, config, model_cfg, backend_cfg, cancel):
        seen.append(priority.interactive_in_flight())
        yield refine_handlers._frame(status="Done.")

    monkeypatch.setattr(refine_handlers, "_run_refinement", fake_run)
    list(refine_handlers.refine_page(QUESTION, DRAFT, "", model_choices()[0], "greedy", 4, 0.7, 400, 5))
    assert seen == [1] and priority.interactive_in_flight() == 0


def test_the_annotate_tabs_run_marks_itself_interactive(store, monkeypatch):
    from cap_app import backends
    from cap_app.ui import annotate_handlers

    batch_id = make_batch(store, 1)
    backend = SlowBackend()
    monkeypatch.setattr(backends, "get_backend", lambda *args: backend)
    state = annotate_handlers.new_state(batch_id, 0)
    annotate_handlers.run_refinement(store, state, model_choices()[0], "greedy", 400, as_user("ann"))
    assert sources(store, batch_id) == [["run"]]
    assert backend.interactive_seen == [1] and priority.interactive_in_flight() == 0


def test_only_an_admin_starts_stops_or_resumes_a_batch_refinement(store):
    batch_id = make_batch(store, 2)
    for action in (
        lambda: batch_refinement.start(store, batch_id, ANNOTATOR, SETTINGS, backend=SlowBackend()),
        lambda: batch_refinement.resume(store, batch_id, ANNOTATOR, backend=SlowBackend()),
    ):
        with pytest.raises(Refused, match="Only an admin may start or stop the refinement of a whole batch"):
            action()
    assert store.refine_job(batch_id) is None and sources(store, batch_id) == [[], []]
    held = SlowBackend(gate=threading.Event())
    batch_refinement.start(store, batch_id, ADMIN, SETTINGS, backend=held)
    with pytest.raises(StoreError, match="being refined already"):
        batch_refinement.start(store, batch_id, ADMIN, SETTINGS, backend=held)
    with pytest.raises(Refused):
        batch_refinement.stop(store, batch_id, ANNOTATOR)
    assert store.refine_job(batch_id).state == "running"
    batch_refinement.stop(store, batch_id, ADMIN, wait_s=30)
    assert store.refine_job(batch_id).state == "stopped"


@pytest.mark.slow
def test_the_offline_default_refines_a_batch_left_running_when_the_app_starts(tmp_path, monkeypatch):
    """The real llama.cpp backend with the bundled model, through the app's own resume at start."""
    from cap_app.ui.app import resume_batch_refinements

    monkeypatch.setenv("CAP_DB_PATH", str(tmp_path / "annotations.db"))
    store = Store()
    batch_id = make_batch(store, 3)
    store.start_refine_job(batch_id, SETTINGS.to_json(), "lead")  # as a killed server leaves it: running
    assert resume_batch_refinements() == [batch_id]
    assert batch_refinement.wait(batch_id, 300)
    assert batch_refinement.progress(store, batch_id).state == "done", batch_refinement.progress_line(store, batch_id)
    assert sources(store, batch_id) == [["batch"]] * 3
    for position in range(3):
        result = store.refinements(store.item_at(batch_id, position).id)[0].result
        assert result.strategy == "greedy" and result.candidates and result.verdict
        assert "llama.cpp" in result.model or "SmolLM2" in result.model, result.model


@pytest.fixture(autouse=True)
def _no_worker_left_behind():
    """Each test ends with no batch worker of its own still running (they are daemons of this process)."""
    yield
    for batch_id in list(batch_refinement._workers):
        worker = batch_refinement._workers.get(batch_id)
        if worker is not None:
            worker.stop.set()
            worker.cancel.set()
            worker.thread.join(10)


@pytest.mark.slow
@pytest.mark.skipif(not test_clean_stop._can_unshare(), reason="needs unshare --pid (root)")
def test_sigterm_mid_batch_stops_the_app_cleanly_and_the_job_stays_to_resume(tmp_path):
    """The served app resumes a job left running, refines with the offline default, and a SIGTERM
    mid-batch still ends it within the clean-stop bound, keeping every stored item and the job
    'running' for the next start."""
    folder = tmp_path / "app"
    folder.mkdir()
    store = Store(folder / "annotations.db")  # where Pid1App's server keeps its database
    batch_id = make_batch(store, 6)
    store.start_refine_job(batch_id, SETTINGS.to_json(), "lead")
    app = test_clean_stop.Pid1App(folder, prepare=False)
    try:
        until(lambda: sum(map(len, sources(store, batch_id))) >= 1, "the first stored item", timeout_s=180)
        took = app.stop(signal.SIGTERM)
    finally:
        app.kill()
    assert took < test_clean_stop.STOP_LIMIT_S, f"{took:.1f} s: {app.log()}"
    assert app.sandbox_folders() == [], app.log()
    stored = sources(store, batch_id)
    assert 1 <= sum(map(len, stored)) < 6 and all(found in ([], ["batch"]) for found in stored)
    assert store.refine_job(batch_id).state == "running"  # the next start goes on with it
