"""The Annotate tab served by a real `python -m cap_app serve` process, with accounts (a users file).

The browser tests sign in on Gradio's login page and judge with the keyboard shortcuts in headless
chromium, then read the database: every key is stored, in order, and the page shows what is
stored. The kill test has annotators signed in through the app's own API (gradio_client with
auth: the same handlers the page calls), SIGKILLs the server mid-session, and then finds every
acknowledged judgement in the database, once, under the account that made it. All use one server
(started once; the kill test, which ends it, runs last).
"""

from __future__ import annotations

import json
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

from cap_app.annotate.store import Store
from cap_app.ui.annotate_handlers import VIEW
from tests.annotator.conftest import PASSWORD, RIGHT_PROGRAM, make_result, write_jsonl, write_users
from tests.helpers.paths import ROOT

STARTUP_TIMEOUT_S = 120
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WAIT_MS = 30_000  # two cores shared with other work: replies can take seconds
ANNOTATORS = ("kbd", "fast0", "fast50", "tab", "ann", "bob", "killed1", "killed2")
TEAM = {name: "annotator" for name in ANNOTATORS} | {"boss": "admin", "killed-admin": "admin"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """`python -m cap_app serve` on a free port, its database and a 60-item batch under `folder`."""

    def __init__(self, folder: Path, password_hash: str):
        self.folder, self.db_path = folder, folder / "annotations.db"
        self.users_path = write_users(folder / "users.json", password_hash, TEAM)
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
            "CAP_USERS": str(self.users_path),
            "CAP_PREPARE": "0",  # no model is needed here
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
                    if response.status == 200:  # Gradio's login page: nothing else without an account
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
def served(tmp_path_factory, password_hash):
    served = Served(tmp_path_factory.mktemp("served-annotator"), password_hash)
    yield served
    if served.process is not None and served.process.poll() is None:
        served.kill()


def annotate_page(pw, url: str, name: str, role: str, batch_path, items: int):
    """A chromium page signed in as `name` (with `role`) on the Annotate tab, `batch_path` uploaded."""
    from playwright.sync_api import expect

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make .venv/.dev does it)")
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page()
    page.goto(url)
    page.locator("input[type=text], input:not([type])").first.fill(name)
    page.locator("input[type=password]").fill(PASSWORD)
    page.locator("input[type=password]").press("Enter")
    page.get_by_role("tab", name="Annotate").click(timeout=WAIT_MS)
    expect(page.locator("#cap-ann-access")).to_contain_text(f"Signed in as {name} ({role})", timeout=WAIT_MS)
    page.locator("#cap-ann-upload input[type=file]").set_input_files(str(batch_path))
    page.click("#cap-ann-load")
    expect(page.locator("#cap-ann-report")).to_contain_text(f"{items} items", timeout=WAIT_MS)
    return browser, page


def signed_in_page(pw, served: Served, name: str):
    """A chromium page signed in as `name` on the Annotate tab, the test batch uploaded, its first item shown."""
    from playwright.sync_api import expect

    browser, page = annotate_page(pw, served.url, name, "annotator", served.batch_path, 60)
    expect(page.locator("#cap-ann-question")).to_contain_text("Question 0: how many eggs?", timeout=WAIT_MS)
    return browser, page


def stored_form(served: Served, name: str, position: int) -> list[tuple]:
    """Every snapshot `name` stored for the item at `position`, oldest first: (correct, vs_draft, origin)."""
    with Store(served.db_path)._connect() as conn:
        rows = conn.execute(
            """SELECT j.correct, j.vs_draft, j.origin FROM judgements j JOIN refinements r ON r.id = j.refinement_id
               JOIN items i ON i.id = r.item_id WHERE j.annotator = ? AND i.position = ? AND j.undone_at IS NULL
               ORDER BY j.id""",
            (name, position),
        ).fetchall()
    return [tuple(row) for row in rows]


def radios(page) -> tuple:
    def checked(elem_id: str):
        values = page.locator(f"#{elem_id} input:checked").evaluate_all("(inputs) => inputs.map((i) => i.value)")
        return values[0] if values else None

    return checked("cap-ann-correct"), checked("cap-ann-vs")


def wait_for(predicate, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_keyboard_shortcuts_judge_navigate_and_undo_in_a_browser(served):
    from playwright.sync_api import expect, sync_playwright

    served.running()
    with sync_playwright() as pw:
        browser, page = signed_in_page(pw, served, "kbd")
        question, status = page.locator("#cap-ann-question"), page.locator("#cap-ann-status")
        question.click()  # out of the text fields: keys are shortcuts now
        page.keyboard.press("n")
        expect(status).to_contain_text("Saved: item 1", timeout=WAIT_MS)
        page.keyboard.press("w")
        expect(page.locator("#cap-ann-progress")).to_contain_text("1 / 60 judged by kbd", timeout=WAIT_MS)
        expect(status).to_contain_text("vs draft: worse", timeout=WAIT_MS)
        page.keyboard.press("j")
        expect(question).to_contain_text("Question 1: how many eggs?", timeout=WAIT_MS)
        page.keyboard.press("z")  # undoes "worse" on item 1 and shows item 1 again
        expect(status).to_contain_text("Undid your change to item 1", timeout=WAIT_MS)
        expect(question).to_contain_text("Question 0: how many eggs?", timeout=WAIT_MS)
        page.keyboard.press("g")
        expect(question).to_contain_text("Question 1: how many eggs?", timeout=WAIT_MS)
        browser.close()
    mine = [row for row in Store(served.db_path).current_judgements() if row.judgement.annotator == "kbd"]
    assert [(row.item.position, row.judgement.correct, row.judgement.vs_draft) for row in mine] == [(0, "no", None)]
    assert {row.judgement.origin for row in mine} == {"page"}


@pytest.mark.parametrize("gap_ms", [0, 50])
def test_keys_pressed_fast_are_each_stored_in_order_and_the_page_shows_what_is_stored(served, gap_ms):
    """Pairs of keys (a field each) at 0 and 50 ms apart: both are stored, in the order pressed, and
    the radios end showing exactly the stored form; then the same field twice: the last one wins."""
    from playwright.sync_api import expect, sync_playwright

    served.running()
    name = f"fast{gap_ms}"
    with sync_playwright() as pw:
        browser, page = signed_in_page(pw, served, name)
        question, status = page.locator("#cap-ann-question"), page.locator("#cap-ann-status")
        pairs = [("n", "w", ("no", "worse")), ("y", "b", ("yes", "better")), ("u", "s", ("unsure", "same"))]
        for position, (first, second, expected) in enumerate(pairs):
            expect(question).to_contain_text(f"Question {position}: how many eggs?", timeout=WAIT_MS)
            question.click()
            page.keyboard.press(first)
            page.wait_for_timeout(gap_ms)
            page.keyboard.press(second)
            final = [(*expected, "page")]
            assert wait_for(lambda p=position, f=final: stored_form(served, name, p)[-1:] == f)
            snapshots = stored_form(served, name, position)
            assert snapshots == [(expected[0], None, "page"), (*expected, "page")]  # each key once, in order
            saved = f"correct: {expected[0]}, vs draft: {expected[1]}"  # "Saved" says the stored form
            expect(status).to_contain_text(saved, timeout=WAIT_MS)
            assert wait_for(lambda e=expected: radios(page) == e), radios(page)
            page.keyboard.press("j")
        expect(question).to_contain_text("Question 3: how many eggs?", timeout=WAIT_MS)
        question.click()
        for key in ("y", "n", "u", "n"):  # one field, four times, 0-50 ms apart
            page.keyboard.press(key)
            page.wait_for_timeout(gap_ms)
        assert wait_for(lambda: len(stored_form(served, name, 3)) == 4), stored_form(served, name, 3)
        assert [form[0] for form in stored_form(served, name, 3)] == ["yes", "no", "unsure", "no"]
        assert wait_for(lambda: radios(page) == ("no", None)), radios(page)
        browser.close()


def test_tabbing_through_the_fields_and_clicking_the_margin_never_shows_or_stores_a_stale_form(served):
    """The sequence that once showed "Saved" with a blank radio and then wiped the stored verdict:
    edit a text field, Tab on (focus lands in Batch), click the page margin, press n, then s."""
    from playwright.sync_api import expect, sync_playwright

    served.running()
    with sync_playwright() as pw:
        browser, page = signed_in_page(pw, served, "tab")
        status = page.locator("#cap-ann-status")
        field = page.locator("#cap-ann-path input, #cap-ann-path textarea").first
        field.fill("")
        field.press("Tab")
        field.fill("something")
        field.fill("")
        page.locator("#cap-ann-batch input").first.focus()  # where Tab lands on the page of the issue
        page.keyboard.press("Tab")
        page.mouse.click(5, 300)  # the page margin: every field loses focus
        page.keyboard.press("n")
        expect(status).to_contain_text("Saved: item 1", timeout=WAIT_MS)
        assert wait_for(lambda: radios(page) == ("no", None)), radios(page)
        assert stored_form(served, "tab", 0) == [("no", None, "page")]
        page.keyboard.press("s")
        assert wait_for(lambda: stored_form(served, "tab", 0)[-1:] == [("no", "same", "page")])
        assert wait_for(lambda: radios(page) == ("no", "same")), radios(page)
        page.wait_for_timeout(1000)  # late replies of the blur events change nothing
        assert radios(page) == ("no", "same") and stored_form(served, "tab", 0)[-1] == ("no", "same", "page")
        browser.close()


def test_through_the_api_only_a_signed_in_account_acts_and_only_as_itself(served):
    """gradio_client as a hostile visitor would use it: without an account nothing answers; an
    annotator's calls act on their own judgements only and cannot export; an admin's export names
    who judged and from where."""
    import csv

    from gradio_client import Client, handle_file

    served.running()
    with pytest.raises(Exception):  # noqa: B017 - gradio_client's error for a login-protected app
        Client(served.url, verbose=False)
    with pytest.raises(Exception):  # noqa: B017
        Client(served.url, auth=("ann", "not the password"), verbose=False)
    ann = Client(served.url, auth=("ann", PASSWORD), verbose=False)
    bob = Client(served.url, auth=("bob", PASSWORD), verbose=False)
    for client in (ann, bob):
        client.predict(handle_file(str(served.batch_path)), "", "draft", api_name="/annotate_load_file")
    assert "as ann:" in ann.predict("no", api_name="/annotate_record_judgement_correct")[0]
    seen_by_bob = bob.predict(api_name="/annotate_step_1")  # to item 2 and back: bob's own form on item 1
    seen_by_bob = bob.predict(api_name="/annotate_step_back1")
    shown = dict(zip([name for name in VIEW if name != "state"], seen_by_bob, strict=True))  # no State in replies
    assert shown["correct"] is None and "Question 0" in shown["question"]
    assert "as bob:" in bob.predict("yes", api_name="/annotate_record_judgement_correct")[0]
    for _ in range(2):
        bob.predict(api_name="/annotate_undo")
    path, summary, _ = bob.predict(api_name="/annotate_export_download_csv")
    assert path is None and "Only an admin may export" in summary
    boss = Client(served.url, auth=("boss", PASSWORD), verbose=False)
    path, summary, _ = boss.predict(api_name="/annotate_export_download_csv")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [(r["annotator"], r["origin"], r["item"], r["correct"]) for r in csv.DictReader(fh)]
    assert ("ann", "api", "1", "no") in rows and not [row for row in rows if row[0] == "bob"]  # bob's undone


def test_an_annotator_cannot_load_a_server_file_by_naming_it_as_the_upload(served):
    """Loading by path is an admin's; an annotator's raw API call naming a server file in the upload
    field is refused by Gradio (only files a user uploaded are accepted), while a real upload loads."""
    import uuid

    import httpx

    served.running()
    with httpx.Client(base_url=served.url, timeout=60) as http:
        assert http.post("login", data={"username": "bob", "password": PASSWORD}).status_code == 200
        config = http.get("config").json()
        [load] = [d["id"] for d in config["dependencies"] if d.get("api_name") == "annotate_load_file"]

        def load_file(path: str) -> dict:
            session = uuid.uuid4().hex[:10]
            upload = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "batch.jsonl"}
            data = [None, upload, "", "draft", "triage"]  # state, upload, path, draft key, order
            payload = {"data": data, "fn_index": load, "session_hash": session}
            assert http.post("gradio_api/queue/join", json=payload).status_code == 200
            with http.stream("GET", f"gradio_api/queue/data?session_hash={session}") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:") and (message := json.loads(line[5:])).get("msg") == "process_completed":
                        return message
            raise AssertionError("no reply")

        refused = load_file(str(served.batch_path))
        assert refused["success"] is False and "data" not in refused["output"]
        uploaded = http.post("gradio_api/upload", files={"files": ("batch.jsonl", served.batch_path.read_bytes())})
        assert "60 items loaded" in load_file(uploaded.json()[0])["output"]["data"][1]
    assert "not uploaded by a user" in served.log()


def _judging(url: str, batch_path: str, name: str, stop: threading.Event):
    """Signed in as `name` (the server needs CAP_USERS with PASSWORD, see write_users), judge item after
    item, a field at a time as the page does; yield (item, field, value) as each 'Saved' reply arrives."""
    from gradio_client import Client, handle_file

    try:
        client = Client(url, auth=(name, PASSWORD), verbose=False)
        client.predict(handle_file(batch_path), "", "draft", api_name="/annotate_load_file")
        count = 0
        while not stop.is_set():
            changes = (("correct", ("yes", "no", "unsure")[count % 3]), ("note", f"{name} note {count}"))
            for field, value in changes:
                status = client.predict(value, api_name=f"/annotate_record_judgement_{field}")[0]
                item = int(re.search(rf"Saved: item (\d+), refinement 1 as {name}:", status).group(1))
                yield item, field, value
            client.predict(api_name="/annotate_step_1")
            count += 1
    except Exception:  # the server was stopped under us: stop
        if not stop.is_set():
            raise


def judge_field_by_field_until_stopped(
    url: str, batch_path: str, name: str, acked: list, stop: threading.Event
) -> None:
    """Each acknowledged change: (name, item, field, value)."""
    for item, field, value in _judging(url, batch_path, name, stop):
        acked.append((name, item, field, value))


def annotate_until_stopped(url: str, batch_path: str, name: str, acked: list, stop: threading.Event) -> None:
    """Each acknowledged judgement, once both its fields are: (name, item, correct, note)."""
    correct = None
    for item, field, value in _judging(url, batch_path, name, stop):
        if field == "correct":
            correct = value
        else:
            acked.append((name, item, correct, value))


def test_fields_open_empty_a_typed_path_replaces_the_upload_and_a_reload_reopens_the_batch(served):
    """Issue 25 items 7, 10 and 11 as the browser shows them: Item and First wrong step opened showing
    0; a path typed after an upload was ignored by Load; a reload forgot the batch."""
    from playwright.sync_api import expect, sync_playwright

    served.running()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(served.url)
        page.locator("input[type=text], input:not([type])").first.fill("boss")
        page.locator("input[type=password]").fill(PASSWORD)
        page.locator("input[type=password]").press("Enter")
        page.get_by_role("tab", name="Annotate").click(timeout=WAIT_MS)
        expect(page.locator("#cap-ann-access")).to_contain_text("Signed in as boss (admin)", timeout=WAIT_MS)
        item = page.locator("#cap-ann-position input, #cap-ann-position textarea").first
        step = page.locator("#cap-ann-step input, #cap-ann-step textarea").first
        assert (item.input_value(), step.input_value()) == ("", "")
        report, question = page.locator("#cap-ann-report"), page.locator("#cap-ann-question")
        page.locator("#cap-ann-upload input[type=file]").set_input_files(str(served.batch_path))
        page.click("#cap-ann-load")
        expect(report).to_contain_text("Loaded the uploaded file", timeout=WAIT_MS)
        page.locator("#cap-ann-path input, #cap-ann-path textarea").first.fill(str(served.batch_path))
        page.click("#cap-ann-load")  # the typed path cleared the upload: Load reads the path
        expect(report).to_contain_text("Loaded the path on the server", timeout=WAIT_MS)
        expect(question).to_contain_text("Question 0: how many eggs?", timeout=WAIT_MS)
        item.fill("5")
        item.press("Enter")
        expect(question).to_contain_text("Question 4: how many eggs?", timeout=WAIT_MS)
        assert step.input_value() == ""
        page.reload()
        page.get_by_role("tab", name="Annotate").click(timeout=WAIT_MS)
        expect(question).to_contain_text("Question 4: how many eggs?", timeout=WAIT_MS)
        expect(page.locator("#cap-ann-status")).to_contain_text("Reopened batch.jsonl", timeout=WAIT_MS)
        assert (item.input_value(), step.input_value()) == ("5", "")
        browser.close()


def test_sigkill_mid_session_loses_duplicates_or_misattributes_no_acknowledged_judgement(served):
    served.running()
    acked: list[tuple[str, int, str, str]] = []
    stop = threading.Event()
    names = ("killed1", "killed2", "killed-admin")  # their own accounts: other tests judged on this server
    workers = [
        threading.Thread(
            target=judge_field_by_field_until_stopped, args=(served.url, str(served.batch_path), name, acked, stop)
        )
        for name in names
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 90
    while len(acked) < 30 and time.monotonic() < deadline and all(w.is_alive() for w in workers):
        time.sleep(0.05)
    stop.set()
    served.kill()  # requests are still in flight
    for worker in workers:
        worker.join(timeout=30)
    assert served.process.returncode == -signal.SIGKILL
    assert len(acked) >= 30, f"only {len(acked)} changes acknowledged: {served.log()}"
    assert {name for name, *_ in acked} == set(names)

    store = Store(served.db_path)  # reopening after the kill recovers the write-ahead log
    with store._connect() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute(
            """SELECT j.annotator, i.position + 1, j.correct, j.note, j.origin FROM judgements j
               JOIN refinements r ON r.id = j.refinement_id JOIN items i ON i.id = r.item_id ORDER BY j.id"""
        ).fetchall()
    stored: dict[tuple[str, int], list[tuple]] = {}
    for annotator, item, correct, note, origin in rows:
        if annotator not in names:  # the browser tests' judgements, on the same server
            continue
        assert origin == "api" and (not note or note.startswith(f"{annotator} note")), (annotator, note)  # theirs
        stored.setdefault((annotator, item), []).append((correct, note))
    expected: dict[tuple[str, int], list[tuple]] = {}
    for name, item, field, value in acked:
        form = dict(zip(("correct", "note"), (expected.get((name, item)) or [(None, "")])[-1], strict=True))
        form[field] = value
        expected.setdefault((name, item), []).append((form["correct"], form["note"]))
    for key, snapshots in expected.items():
        # every acknowledged change once, in order; at most one more, in flight at the kill
        assert stored.get(key, [])[: len(snapshots)] == snapshots, (key, stored.get(key))
        assert len(stored[key]) <= len(snapshots) + 1, (key, stored[key])
    unacked = [key for key in stored if key not in expected]
    assert len(unacked) <= len(names), unacked  # at most one change each was in flight
