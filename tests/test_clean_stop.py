"""A clean stop: the app as PID 1 of a new PID namespace (as in a container, where the kernel
ignores a signal PID 1 has no handler for) ends within 5 s of SIGINT or SIGTERM, removes the
sandbox's private folders, and keeps every judgement it acknowledged before the signal.

`unshare --pid --fork --mount-proc` (util-linux, root) makes the namespace; the app's process is
unshare's child, and the signal comes from outside it, as `docker stop` sends it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from argon2 import PasswordHasher

from cap_app.annotate.store import Store
from tests.annotator.conftest import PASSWORD, RIGHT_PROGRAM, make_result, write_jsonl, write_users
from tests.annotator.test_served_annotator import annotate_until_stopped, free_port
from tests.helpers.paths import ROOT

STARTUP_TIMEOUT_S = 120
STOP_LIMIT_S = 5.0  # the bound, from the signal to the process's end


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _can_unshare(), reason="needs unshare --pid (root)")


class Pid1App:
    """`python -m cap_app serve` as PID 1 of its own PID namespace, with its own TMPDIR and database."""

    def __init__(self, folder: Path, *, prepare: bool):
        self.folder, self.tmp, self.db_path = folder, folder / "tmp", folder / "annotations.db"
        self.tmp.mkdir()
        self.batch_path = write_jsonl(
            folder / "batch.jsonl",
            [make_result(RIGHT_PROGRAM, "18", question=f"Question {i}: how many eggs?").to_dict() for i in range(60)],
        )
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        env = {
            **os.environ,
            "TMPDIR": str(self.tmp),
            "CAP_PREPARE": "1" if prepare else "0",
            "CAP_BATCH_DIRS": str(folder),
            "GRADIO_TEMP_DIR": str(folder / "gradio-tmp"),
            "CAP_USERS": str(write_users(folder / "users.json", PasswordHasher().hash(PASSWORD))),  # ann, bob
        }
        env.pop("CAP_DB_PATH", None)
        command = [sys.executable, "-m", "cap_app", "serve", "--port", str(port), "--db", str(self.db_path)]
        self.log_path = folder / "server.log"
        with open(self.log_path, "wb") as log:
            self.unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", *command],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.app = self._wait_until_serving()

    def _wait_until_serving(self) -> psutil.Process:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.unshare.poll() is None, f"app exited: {self.log()}"
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        (app,) = psutil.Process(self.unshare.pid).children()
                        return app
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise AssertionError(f"app did not start: {self.log()}")

    def sandbox_folders(self) -> list[Path]:
        return sorted(self.tmp.glob("cap-sandbox-*"))

    def stop(self, signum: int) -> float:
        """Send `signum` to the app (PID 1 inside) and return the seconds until it has ended."""
        assert self._pid_inside() == 1
        sent = time.monotonic()
        self.app.send_signal(signum)
        try:
            self.unshare.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the app ignored {signum!r} for 30 s: {self.log()}") from None
        return time.monotonic() - sent

    def _pid_inside(self) -> int:
        """The app's process id in its own namespace (the last NSpid of /proc/PID/status)."""
        for line in Path(f"/proc/{self.app.pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
        raise AssertionError("no NSpid")

    def kill(self) -> None:
        if self.unshare.poll() is None:
            os.killpg(self.unshare.pid, signal.SIGKILL)
            self.unshare.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


@pytest.fixture
def start_app(tmp_path):
    apps = []

    def start(**kwargs) -> Pid1App:
        folder = tmp_path / f"app{len(apps)}"
        folder.mkdir()
        apps.append(Pid1App(folder, **kwargs))
        return apps[-1]

    yield start
    for app in apps:
        app.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_app_as_pid_1_and_removes_the_sandbox_folders(start_app, signum):
    app = start_app(prepare=True)  # the model's preparation may still be running: it must not hold the stop up
    assert app.sandbox_folders(), "the app starts its sandbox at launch; nothing to check otherwise"
    took = app.stop(signum)
    assert took < STOP_LIMIT_S, f"{took:.1f} s: {app.log()}"
    assert app.sandbox_folders() == [], app.log()
    assert "stopping the app" in app.log()


def test_sigterm_mid_judgement_keeps_every_acknowledged_judgement(start_app):
    app = start_app(prepare=False)
    acked: list[tuple[str, int, str, str]] = []
    stop = threading.Event()
    workers = [
        threading.Thread(target=annotate_until_stopped, args=(app.url, str(app.batch_path), name, acked, stop))
        for name in ("ann", "bob")
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while len(acked) < 12 and time.monotonic() < deadline and all(w.is_alive() for w in workers):
        time.sleep(0.05)
    stop.set()  # no new judgements after the ones in flight, which the signal interrupts
    took = app.stop(signal.SIGTERM)
    for worker in workers:
        worker.join(timeout=30)
    assert took < STOP_LIMIT_S, f"{took:.1f} s: {app.log()}"
    assert len(acked) >= 12, f"only {len(acked)} judgements acknowledged: {app.log()}"
    assert app.sandbox_folders() == []
    saved = {
        (row.judgement.annotator, row.item.position + 1): (row.judgement.correct, row.judgement.note)
        for row in Store(app.db_path).current_judgements()
    }
    for name, item, correct, note in acked:
        assert saved.get((name, item)) == (correct, note), (name, item)
