"""Fixtures for the sandbox tests: running zygotes, a canary file the sandbox must never touch,
and `run_hostile`, which runs a program and checks that nothing outside it changed."""

from __future__ import annotations

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
