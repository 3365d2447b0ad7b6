"""The Annotate tab served by a real `python -m cap_app serve` process.

The browser test judges with the keyboard shortcuts in headless chromium. The kill test has two
annotators judging through the app's own API (gradio_client: the same handlers the page calls),
SIGKILLs the server mid-session, and then finds every acknowledged judgement in the database.
Both use one server (started once; the kill test, which ends it, runs last).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from cap_app.store import Store
from tests.annotator.conftest import RIGHT_PROGRAM, make_result, write_jsonl
from tests.helpers.paths import ROOT

STARTUP_TIMEOUT_S = 120
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WAIT_MS = 30_000  # two cores shared with other work: replies can take seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """`python -m cap_app serve` on a free port, its database and a 60-item batch under `folder`."""

    def __init__(self, folder: Path):
        self.folder, self.db_path = folder, folder / "annotations.db"
        (folder / "batches").mkdir()
        rows = [make_result(RIGHT_PROGRAM, "18", question=f"Question {i}: how many eggs?").to_dict() for i in range(60)]
        self.batch_path = write_jsonl(folder / "batches" / "batch.jsonl", rows)
        self.log_path = folder / "server.log"
        self.process: subprocess.Popen | None = None
        self.url = ""

    def running(self) -> Served:
        """The server, started now unless it still runs."""
        if self.process is not None and self.process.poll() is None:
            return self
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        env = {
            **os.environ,
            "CAP_BATCH_DIRS": str(self.batch_path.parent),
            "GRADIO_TEMP_DIR": str(self.folder / "gradio-tmp"),
        }
        env.pop("CAP_DB_PATH", None)  # the database comes from --db
        command = [sys.executable, "-m", "cap_app", "serve", "--port", str(port), "--db", str(self.db_path)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited: {self.log()}"
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise AssertionError(f"server did not start: {self.log()}")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    served = Served(tmp_path_factory.mktemp("served-annotator"))
    yield served
    if served.process is not None and served.process.poll() is None:
        served.kill()


def test_keyboard_shortcuts_judge_navigate_and_undo_in_a_browser(served):
    from playwright.sync_api import expect, sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make .venv/.dev does it)")
    served.running()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(served.url)
        page.get_by_role("tab", name="Annotate").click()
        page.locator("#cap-ann-name input, #cap-ann-name textarea").first.fill("kbd")
        page.locator("#cap-ann-path input, #cap-ann-path textarea").first.fill(str(served.batch_path))
        page.click("#cap-ann-load")
        question, status = page.locator("#cap-ann-question"), page.locator("#cap-ann-status")
        expect(question).to_contain_text("Question 0: how many eggs?", timeout=WAIT_MS)
        question.click()  # out of the text fields: keys are shortcuts now
        page.keyboard.press("n")
        expect(status).to_contain_text("Saved: item 1", timeout=WAIT_MS)
        page.keyboard.press("w")
        expect(page.locator("#cap-ann-progress")).to_contain_text("1 / 60 judged by kbd", timeout=WAIT_MS)
        page.keyboard.press("j")
        expect(question).to_contain_text("Question 1: how many eggs?", timeout=WAIT_MS)
        page.keyboard.press("z")  # undoes "worse" on item 1 and shows item 1 again
        expect(status).to_contain_text("Undid your change to item 1", timeout=WAIT_MS)
        expect(question).to_contain_text("Question 0: how many eggs?", timeout=WAIT_MS)
        page.keyboard.press("g")
        expect(question).to_contain_text("Question 1: how many eggs?", timeout=WAIT_MS)
        page.reload()  # the name is kept by the browser across reloads and visits
        page.get_by_role("tab", name="Annotate").click()
        expect(page.locator("#cap-ann-name input, #cap-ann-name textarea").first).to_have_value("kbd", timeout=WAIT_MS)
        browser.close()
    mine = [row for row in Store(served.db_path).current_judgements() if row.judgement.annotator == "kbd"]
    assert [(row.item.position, row.judgement.correct, row.judgement.vs_draft) for row in mine] == [(0, "no", None)]


def annotate_until_stopped(url: str, batch_path: str, name: str, acked: list, stop: threading.Event) -> None:
    """Judge item after item; a judgement counts as acknowledged once its 'Saved' reply arrives."""
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
        client.predict(None, batch_path, "draft", name, api_name="/annotate_load_file")
        count = 0
        while not stop.is_set():
            correct = ("yes", "no", "unsure")[count % 3]
            note = f"{name} note {count}"
            status = client.predict(name, correct, "same", None, note, api_name="/annotate_record_judgement")[0]
            item = int(re.search(r"Saved: item (\d+)", status).group(1))
            acked.append((name, item, correct, note))
            client.predict(name, api_name="/annotate_step_1")
            count += 1
    except Exception:  # the server was killed under us: stop
        if not stop.is_set():
            raise


def test_sigkill_mid_session_loses_no_acknowledged_judgement(served):
    served.running()
    acked: list[tuple[str, int, str, str]] = []
    stop = threading.Event()
    workers = [
        threading.Thread(target=annotate_until_stopped, args=(served.url, str(served.batch_path), name, acked, stop))
        for name in ("ann", "bob")
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while len(acked) < 16 and time.monotonic() < deadline and all(w.is_alive() for w in workers):
        time.sleep(0.05)
    stop.set()
    served.kill()  # requests are still in flight
    for worker in workers:
        worker.join(timeout=30)
    assert served.process.returncode == -signal.SIGKILL
    assert len(acked) >= 16, f"only {len(acked)} judgements acknowledged: {served.log()}"
    assert {name for name, *_ in acked} == {"ann", "bob"}

    store = Store(served.db_path)  # reopening after the kill recovers the write-ahead log
    saved = {
        (row.judgement.annotator, row.item.position + 1): (row.judgement.correct, row.judgement.note)
        for row in store.current_judgements()
    }
    for name, item, correct, note in acked:
        assert saved.get((name, item)) == (correct, note), (name, item)
