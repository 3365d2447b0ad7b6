"""Fixtures for the sandbox tests: running zygotes, a canary file the sandbox must never touch,
`run_hostile`, which runs a program and checks that nothing outside it changed, and `in_child`
with the `user` fixture, which run plain Python in a forked child as root or as uid 1000."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.sandbox.hostile")

from cap_app.sandbox import ExecResult, run_program, server_pids, start_servers  # noqa: E402

CANARY_TEXT = "the sandbox never touched this file\n"


@pytest.fixture(scope="session")
def zygote_pids() -> dict[str, int | None]:
    start_servers(with_sympy=True)
    pids = server_pids()
    assert all(pids.values()), pids
    return pids


@pytest.fixture(scope="session")
def canary(tmp_path_factory) -> Path:
    """A world-writable file in a world-writable folder: only the sandbox keeps programs off it."""
    folder = tmp_path_factory.mktemp("canary")
    path = folder / "canary.txt"
    path.write_text(CANARY_TEXT)
    os.chmod(folder, 0o777)
    os.chmod(path, 0o666)
    return path


@pytest.fixture
def run_hostile(zygote_pids, canary):
    """Run a program (CANARY in it stands for the canary's path) and assert no side effect:
    the canary and its folder unchanged, the zygotes the same processes, this process intact."""
    before_env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    before_cwd = os.getcwd()

    def run(code: str, **limits) -> ExecResult:
        listing = sorted(os.listdir(canary.parent))
        result = run_program(code.replace("CANARY", str(canary)), **limits)
        assert canary.read_text() == CANARY_TEXT
        assert sorted(os.listdir(canary.parent)) == listing
        assert server_pids() == zygote_pids, "a zygote died or was replaced"
        assert os.getcwd() == before_cwd
        assert {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} == before_env
        return result

    return run


USER_UID = 1000  # the Dockerfile's user, and every Hugging Face Space's
RESULT_FD = 3  # where `in_child` writes the outcome (a sealed child keeps only this descriptor)
_PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(params=["root", "user"])
def user(request) -> int | None:
    """Who the zygote runs as: None, this process's user (root in CI), or the uid a root test
    process switches to. Without root only the current user can be tested."""
    if request.param == "root":
        if os.getuid() != 0:
            pytest.skip("needs root (CI runs as root)")
        return None
    return USER_UID if os.getuid() == 0 else None


def in_child(action, uid: int | None = None) -> str:
    """Run `action` in a forked child, as `uid` when given (like a process started as that
    user); return 'ok: <its result>' or '<exception type>: <message>'."""
    result_read, result_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(result_write, RESULT_FD)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                _libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # as after exec, unlike after setuid
            outcome = f"ok: {action()}"
        except BaseException as exc:  # noqa: BLE001 (reported to the parent)
            outcome = f"{type(exc).__name__}: {exc}"
        os.write(RESULT_FD, outcome.encode()[:2000])
        os._exit(0)
    os.close(result_write)
    chunks = []
    while chunk := os.read(result_read, 4096):
        chunks.append(chunk)
    os.close(result_read)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()
