"""`run_program`: the sandbox's public entry point, the client side of the zygote.

Each calling process starts its own zygote (`zygote.py`) on first use and talks to it over a
Unix socket in a private temporary directory, one connection per run, so any number of threads
can run programs at once. If the zygote dies it is restarted and the run retried once. This
process holds the write end of the zygote's stdin: when it exits for any reason (even killed),
the zygote reads end-of-file and stops.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cap_app.sandbox import protocol
from cap_app.sandbox.config import SandboxConfig
from cap_app.sandbox.modules import SLOW_MODULES
from cap_app.sandbox.policy import check_program
from cap_app.sandbox.result import ExecResult, TraceStep, clean_text
from cap_app.sandbox.walls import SECOND_WALLS, describe

logger = logging.getLogger(__name__)
START_TIMEOUT_S = 120.0  # importing sympy on a busy 2-core machine can take a while
MALFORMED = "the sandbox returned a malformed result"
RECEIVE_TICK = struct.pack("ll", 1, 0)  # a struct timeval of 1 s
QUEUE_WAIT_S = 300.0  # on top of the program's own limit: time a run may wait for a free slot


class SandboxUnavailable(RuntimeError):
    """The zygote could not be started or stopped answering."""


class SandboxServer:
    """A handle on this process's zygote; started lazily, restarted when it dies. `package_root`:
    where the zygote's code comes from (a benchmark compares with an older copy)."""

    def __init__(self, with_sympy: bool = False, package_root: str | None = None) -> None:
        self.with_sympy = with_sympy
        self.package_root = package_root or str(Path(__file__).resolve().parents[2])
        self.walls: tuple[str, ...] = ()  # what the zygote's children are walled in by (walls.py)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._owner_pid = 0
        self._directory = ""

    @property
    def socket_path(self) -> str:
        return os.path.join(self._directory, "zygote.sock")

    def start(self) -> None:
        """Start the zygote now (otherwise the first run does); idempotent. Whether a started
        zygote still runs is checked when a run fails (`request`), not before every run."""
        if self._started_here():
            return
        with self._lock:
            if self._started_here():
                return
            if self._owner_pid == os.getpid():
                self._stop_locked()
            self._start_locked()

    def _started_here(self) -> bool:
        process = self._process
        return process is not None and self._owner_pid == os.getpid() and process.returncode is None

    def _start_locked(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="cap-sandbox-")
        # A minimal environment: programs must not find this process's secrets (tokens, keys)
        # in their own memory, even past the policy. `-S`: no `site`, so no .pth hooks run in
        # the zygote and it is ~0.6 MB smaller (every fork copies its page tables); the folders
        # of the libraries it needs come after the standard library (zygote.py), and it runs in
        # its private folder, so nothing in the caller's working folder can shadow a module.
        env = {
            "PATH": os.defpath,
            "LC_ALL": "C.UTF-8",
            "PYTHONPATH": self.package_root,
            "CAP_SANDBOX_LIBRARIES": os.pathsep.join(_library_folders(self.with_sympy)),
        }
        if "TZ" in os.environ:
            env["TZ"] = os.environ["TZ"]
        command = [sys.executable, "-S", "-m", "cap_app.sandbox.zygote", self.socket_path]
        try:
            process = subprocess.Popen(
                command + (["--sympy"] if self.with_sympy else []),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
                cwd=self._directory,
            )
        except OSError as exc:
            shutil.rmtree(self._directory, ignore_errors=True)
            raise SandboxUnavailable(f"the sandbox server did not start: {exc}") from None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
        words = (process.stdout.readline() if ready else b"").decode("ascii", "replace").split()
        if words[:1] != ["ready"]:
            process.kill()
            process.wait()
            shutil.rmtree(self._directory, ignore_errors=True)
            raise SandboxUnavailable("the sandbox server did not start")
        self._process, self._owner_pid, self.walls = process, os.getpid(), tuple(words[1:])
        if not any(wall in self.walls for wall in SECOND_WALLS):
            logger.warning(describe(self.walls))

    def stop(self) -> None:
        """Stop the zygote (its children are killed); a later run starts a new one."""
        with self._lock:
            if self._owner_pid == os.getpid():
                self._stop_locked()

    def _stop_locked(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stdin.close()  # the zygote's signal to stop
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
        if self._directory:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = ""

    @property
    def pid(self) -> int | None:
        """The zygote's process id while it runs in this process's service, else None."""
        return self._process.pid if self._alive() and self._owner_pid == os.getpid() else None

    def _alive(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None

    def request(self, payload: bytes, wait_limit_s: float) -> bytes:
        """Send one run, return the whole reply (see protocol.py); raises SandboxUnavailable if
        the zygote dies or stops answering."""
        self.start()
        chunks: list[bytes] = []
        size = 0
        waited_since = time.monotonic()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(self.socket_path)
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
                # One blocking call takes the whole reply (MSG_WAITALL returns at end of file), so
                # the thread wakes once per run, not per write; every second it checks the zygote.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, RECEIVE_TICK)
                while size <= protocol.MAX_REPLY_BYTES:
                    try:
                        chunk = conn.recv(1 << 16, socket.MSG_WAITALL)
                    except BlockingIOError:  # a tick without the whole reply
                        if not self._alive() or time.monotonic() - waited_since > wait_limit_s:
                            raise SandboxUnavailable("the sandbox server stopped answering") from None
                        continue
                    if not chunk:
                        return b"".join(chunks)
                    chunks.append(chunk)
                    size += len(chunk)
        except OSError as exc:
            self._alive()  # notes a zygote that has died, so the retry starts a new one
            raise SandboxUnavailable(f"the sandbox server is unreachable: {exc}") from None
        # More than the worker ever writes: closing the connection stops the child's writes.
        return protocol.zygote_error(MALFORMED)


def _library_folders(with_sympy: bool) -> list[str]:
    """The import folders of the third-party packages the zygote imports (found, not imported)."""
    names = ["RestrictedPython"] + (["sympy", "mpmath"] if with_sympy else [])
    folders = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            folder = os.path.dirname(list(spec.submodule_search_locations)[0])
            if folder not in folders:
                folders.append(folder)
    return folders


_LIGHT = SandboxServer(with_sympy=False)
_FULL = SandboxServer(with_sympy=True)
atexit.register(_LIGHT.stop)
atexit.register(_FULL.stop)


def server_for(code: str) -> SandboxServer:
    """The zygote for this program: the sympy one only if the program names a slow module
    (an import needs the module's name literally: `__import__` is not reachable)."""
    return _FULL if any(name in code for name in SLOW_MODULES) else _LIGHT


def start_servers(with_sympy: bool = True) -> None:
    """Start the zygotes now rather than on the first run (e.g. when an app starts)."""
    _LIGHT.start()
    if with_sympy:
        _FULL.start()


def server_pids() -> dict[str, int | None]:
    """Process ids of the zygotes ("light", "sympy"), None when not running: a health check."""
    return {"light": _LIGHT.pid, "sympy": _FULL.pid}


def sandbox_walls() -> tuple[str, ...]:
    """The walls around every program (see walls.py), as the light zygote found them; starts it.
    () when it cannot start (each run then reports why)."""
    try:
        _LIGHT.start()
    except SandboxUnavailable:
        return ()
    return _LIGHT.walls


def stop_servers() -> None:
    """Stop the zygotes (and their running children); later runs start new ones."""
    _LIGHT.stop()
    _FULL.stop()


def run_program(code: str, **limits: Any) -> ExecResult:
    """Run an untrusted program in a fresh isolated process; never raises for what it does.

    Keyword arguments are the fields of `SandboxConfig`, defaults included, so that they are
    stated once (invalid values raise ValueError, unknown names TypeError: they come from the
    caller, not the program). Safe from many threads and processes.
    """
    config = SandboxConfig(**limits)
    if not isinstance(code, str):
        return ExecResult(status="rejected", error="the program must be text")
    return run_on(server_for(code), code, config)


def run_on(server: SandboxServer, code: str, config: SandboxConfig) -> ExecResult:
    """`run_program` on the given zygote."""
    # Compiled here, not in the zygote: see zygote.py. Parsing only; nothing of the program runs.
    started = time.perf_counter()
    compiled, error, status = check_program(code, with_sympy=server.with_sympy)
    compile_ms = (time.perf_counter() - started) * 1000
    if compiled is None:
        return ExecResult(status=status, error=error, duration_ms=compile_ms)
    try:
        server.start()  # a first run's server start-up is not the program's duration
    except SandboxUnavailable:
        pass  # `request` below tries again and reports it
    started = time.perf_counter()
    payload = protocol.request_payload(code, compiled, config)
    data = None
    for _ in range(2):  # one retry: a zygote that died is restarted by `request`
        try:
            data = protocol.result_data(server.request(payload, config.timeout_s + QUEUE_WAIT_S), config)
            break
        except (SandboxUnavailable, protocol.BadReply) as exc:
            data = {"status": "error", "error": str(exc)}
    result = result_from_json(data, code)
    result.duration_ms = compile_ms + (time.perf_counter() - started) * 1000
    return result


_STATUSES = ("ok", "error", "timeout", "rejected", "memory")
_RESULT_DEFAULTS = (("stdout", ""), ("error", None), ("answer", None), ("trace", []))


def result_from_json(data: object, source: str) -> ExecResult:
    """An ExecResult from the child's result (see `ProgramRun.run`) for the program `source`.
    The child ran hostile code, so its shape is checked rather than trusted (a malformed result
    becomes an error result). Work the child need not do is done here, where it costs no page
    faults: texts made valid UTF-8, trace steps given their line's source."""
    malformed = ExecResult(status="error", error=MALFORMED)
    if not isinstance(data, dict) or data.get("status") not in _STATUSES:
        return malformed
    stdout, error, answer, trace = (data.get(key, default) for key, default in _RESULT_DEFAULTS)
    flags = [data.get("trace_truncated", False), data.get("stdout_truncated", False)]
    if not (
        isinstance(stdout, str)
        and all(isinstance(text, (str, type(None))) for text in (error, answer))
        and all(isinstance(flag, bool) for flag in flags)
        and isinstance(trace, list)
    ):
        return malformed
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # ast's line breaks
    steps = []
    for step in trace:
        if not (
            isinstance(step, list)
            and len(step) == 2
            and type(step[0]) is int
            and 1 <= step[0] <= len(lines)
            and isinstance(step[1], dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in step[1].items())
        ):
            return malformed
        source_line = clean_text(lines[step[0] - 1].strip()[:200])
        steps.append(TraceStep(step[0], source_line, {clean_text(k): clean_text(v) for k, v in step[1].items()}))
    return ExecResult(
        status=data["status"],
        stdout=clean_text(stdout),
        error=error and clean_text(error),
        answer=answer and clean_text(answer),
        trace=steps,
        trace_truncated=flags[0],
        stdout_truncated=flags[1],
    )
