"""Files, sockets, processes, code execution and I/O builtins. Two walls are tested: the
policy (programs cannot name these things), and the process itself (`seal` + `limit`): code
that got past the policy still cannot open, connect, fork, signal or reach any path."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from cap_app.sandbox import SandboxConfig, worker
from tests.sandbox.hostile import assert_stopped, cases

OPEN_CANARY_FOR_WRITING = "f = open('CANARY', 'w')\nf.write('pwned')"
OPEN_PASSWD = "print(open('/etc/passwd').read())"
EXEC_CALL = "exec('import os')"
EVAL_CALL = "eval('1 + 1')"
COMPILE_BUILTIN = "c = compile('1', 'x', 'eval')"
INPUT_BUILTIN = "x = input()"
EXIT_BUILTIN = "exit(1)"
QUIT_BUILTIN = "quit()"
HELP_BUILTIN = "help(print)"
BREAKPOINT_BUILTIN = "breakpoint()"
PRINT_TO_FILE = "print('x', file=[])"
PRINT_REBIND = "print = 1"
OS_SYSTEM = "import os\nos.system('touch CANARY')"
SUBPROCESS_RUN = "import subprocess\nsubprocess.run(['rm', 'CANARY'])"
CTYPES_LIBC = "import ctypes\nctypes.CDLL(None).system(b'true')"
SOCKET_CONNECT = "import socket\nsocket.create_connection(('127.0.0.1', 80))"
WITH_OPEN = "with open('CANARY', 'a') as f:\n    f.write('x')"
MEMORYVIEW_BUILTIN = "m = memoryview(b'abc')"
BYTEARRAY_BUILTIN = "b = bytearray(10)"
PRINTED_SHADOW = "printed = 1"

CASES = cases(
    (OPEN_CANARY_FOR_WRITING, "error", "line 1: name 'open' is not defined"),
    (OPEN_PASSWD, "error", "line 1: name 'open' is not defined"),
    (EXEC_CALL, "rejected", "line 1: Exec calls are not allowed"),
    (EVAL_CALL, "rejected", "line 1: Eval calls are not allowed"),
    (COMPILE_BUILTIN, "error", "line 1: name 'compile' is not defined"),
    (INPUT_BUILTIN, "error", "line 1: name 'input' is not defined"),
    (EXIT_BUILTIN, "error", "line 1: name 'exit' is not defined"),
    (QUIT_BUILTIN, "error", "line 1: name 'quit' is not defined"),
    (HELP_BUILTIN, "error", "line 1: name 'help' is not defined"),
    (BREAKPOINT_BUILTIN, "rejected", 'line 1: "breakpoint" is a reserved name'),
    (PRINT_TO_FILE, "error", "line 1: print(file=...) is not allowed"),
    (PRINT_REBIND, "rejected", 'line 1: "print" is a reserved name'),
    (OS_SYSTEM, "rejected", "line 1: import of 'os' is not allowed"),
    (SUBPROCESS_RUN, "rejected", "line 1: import of 'subprocess' is not allowed"),
    (CTYPES_LIBC, "rejected", "line 1: import of 'ctypes' is not allowed"),
    (SOCKET_CONNECT, "rejected", "line 1: import of 'socket' is not allowed"),
    (WITH_OPEN, "error", "line 1: name 'open' is not defined"),
    (MEMORYVIEW_BUILTIN, "error", "line 1: name 'memoryview' is not defined"),
    (BYTEARRAY_BUILTIN, "error", "line 1: name 'bytearray' is not defined"),
    (PRINTED_SHADOW, "rejected", 'line 1: "printed" is a reserved name'),
)


@pytest.mark.parametrize("code, status, message", CASES)
def test_os_access_is_stopped(run_hostile, code, status, message):
    assert_stopped(run_hostile(code), status, message)


# ---- the second wall: unrestricted code inside a sealed, limited child


def in_sealed_child(action, tmp_path) -> str:
    """Run `action` (plain Python, as if it had escaped the policy) in a child sealed and
    limited exactly like a sandbox worker; return 'ok: ...' or the exception it raised."""
    empty_root = tmp_path / "empty-root"
    empty_root.mkdir(mode=0o700, exist_ok=True)
    result_read, result_write = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR)
    pid = os.fork()
    if pid == 0:
        try:
            inherited = worker.set_up_zygote()  # what a zygote sets once for all its children
            worker.seal(result_write, devnull, str(empty_root), inherited)
            worker.limit(SandboxConfig(timeout_s=2), inherited.address_space)
            outcome = f"ok: {action()}"
        except BaseException as exc:  # noqa: BLE001 (reported to the parent)
            outcome = f"{type(exc).__name__}: {exc}"
        os.write(worker.RESULT_FD, outcome.encode()[:2000])
        os._exit(0)
    os.close(result_write)
    os.close(devnull)
    chunks = []
    while chunk := os.read(result_read, 4096):
        chunks.append(chunk)
    os.close(result_read)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def test_escaped_code_cannot_open_files(tmp_path, canary):
    outcome = in_sealed_child(lambda: open(canary, "a").write("pwned"), tmp_path)
    assert outcome.startswith(("OSError: [Errno 24]", "FileNotFoundError", "PermissionError"))
    assert "pwned" not in canary.read_text()


def test_escaped_code_cannot_create_sockets(tmp_path):
    outcome = in_sealed_child(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), tmp_path)
    assert outcome == "OSError: [Errno 24] Too many open files"


def test_escaped_code_cannot_make_pipes(tmp_path):
    assert in_sealed_child(os.pipe, tmp_path) == "OSError: [Errno 24] Too many open files"


def test_escaped_code_cannot_fork(tmp_path):
    assert in_sealed_child(os.fork, tmp_path) == "BlockingIOError: [Errno 11] Resource temporarily unavailable"


def test_escaped_code_cannot_write_through_inherited_descriptors(tmp_path):
    """Only /dev/null and the result pipe are open: writing stdout/stderr goes nowhere."""
    outcome = in_sealed_child(lambda: sorted(os.listdir("/proc/self/fd")) if os.path.exists("/proc") else "no /proc", tmp_path)
    assert outcome in ("ok: no /proc", "OSError: [Errno 24] Too many open files")


@pytest.mark.skipif(os.getuid() != 0, reason="the empty root and the user nobody need root (CI runs as root)")
def test_escaped_code_reaches_no_path(tmp_path, canary):
    assert in_sealed_child(lambda: os.unlink(canary), tmp_path).startswith("PermissionError")
    assert in_sealed_child(lambda: os.stat("/etc/passwd"), tmp_path).startswith("PermissionError")
    assert in_sealed_child(lambda: os.mkdir(canary.parent / "new"), tmp_path).startswith("PermissionError")
    assert canary.exists()


@pytest.mark.skipif(os.getuid() != 0, reason="the user nobody needs root (CI runs as root)")
def test_escaped_code_cannot_signal_other_processes(tmp_path):
    assert in_sealed_child(lambda: os.kill(os.getppid(), signal.SIGKILL), tmp_path).startswith("PermissionError")
    assert in_sealed_child(lambda: os.kill(1, signal.SIGTERM), tmp_path).startswith("PermissionError")
