"""The client side: many threads and processes at once, a dead zygote replaced, no zygote left
behind by a dead client, bad settings refused, results that survive JSON."""

from __future__ import annotations

import json
import marshal
import os
import signal
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.processes import zygote_processes
from cap_app.sandbox import ExecResult, SandboxConfig, protocol, run_program, server_pids
from cap_app.sandbox.policy import check_program
from cap_app.sandbox.runner import SandboxServer, result_from_json


def test_many_threads_get_their_own_results(zygote_pids):
    programs = [(f"x = {n}\nprint(x * x)", str(n * n)) for n in range(24)]
    programs.append(("import sympy\nx = sympy.symbols('x')\nprint(sympy.solve(x - 5, x)[0])", "5"))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda item: run_program(item[0]), programs))
    assert [result.answer for result in results] == [answer for _, answer in programs]


def test_hostile_and_ordinary_programs_side_by_side(zygote_pids):
    jobs = ["while True:\n    pass", "print(2 + 2)", "x = [0] * 10 ** 9", "print(3 + 3)"]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda code: run_program(code, timeout_s=1, memory_mb=128), jobs))
    assert [(r.status, r.answer) for r in results] == [("timeout", None), ("ok", "4"), ("memory", None), ("ok", "6")]


CHILD_PROCESS = "from cap_app.sandbox import run_program; print(run_program('print(6 * 7)').answer)"


def test_several_processes_each_use_their_own_zygote():
    processes = [
        subprocess.Popen([sys.executable, "-c", CHILD_PROCESS], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    assert [p.communicate(timeout=120)[0].strip() for p in processes] == ["42", "42"]


A_LIMIT = struct.pack("<d", 5.0)
PRINT_1 = compile("print(1)", "<test>", "exec")


@pytest.mark.parametrize(
    "payload",
    [
        A_LIMIT + b"not marshal",
        A_LIMIT + marshal.dumps(("print(1)", "not a code object", ())),
        A_LIMIT + marshal.dumps(42),
        A_LIMIT + marshal.dumps(("print(1)", PRINT_1, (-1.0, 512, 65536, True, 1000))),
        struct.pack("<d", float("nan")) + marshal.dumps(("print(1)", PRINT_1, ())),
        struct.pack("<d", 1e9) + marshal.dumps(("print(1)", PRINT_1, ())),
        b"\x00\x01",
    ],
)
def test_the_zygote_refuses_malformed_requests(zygote_pids, payload):
    from cap_app.sandbox.runner import _LIGHT

    answer = protocol.result_data(_LIGHT.request(payload, 60), SandboxConfig())
    assert answer["status"] == "error" and answer["error"].startswith("bad sandbox request"), answer
    assert server_pids() == zygote_pids


def test_a_reply_without_the_zygotes_last_line_is_not_a_result():
    """A child may write anything, but only the zygote writes after the child has gone."""
    with pytest.raises(protocol.BadReply):
        protocol.result_data(b'{"status": "ok", "stdout": "1\\n"}\n', SandboxConfig())
    forged = b'{"status": "ok"}\n{"wait_status": 0, "killed": false}\n'
    answer = protocol.result_data(forged + protocol.exit_line(9, True), SandboxConfig(timeout_s=2))
    assert answer == {"status": "timeout", "error": "time limit of 2 s exceeded"}


def test_a_killed_zygote_is_replaced():
    server = SandboxServer()
    try:
        server.start()
        first = server.pid
        os.kill(first, signal.SIGKILL)
        payload = protocol.request_payload("print(1)", check_program("print(1)")[0], SandboxConfig())
        deadline = time.monotonic() + 5
        while server.pid is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # the kill lands asynchronously
        assert protocol.result_data(server.request(payload, 60), SandboxConfig())["stdout"] == "1\n"
        assert server.pid not in (None, first)
    finally:
        server.stop()


def test_a_run_right_after_the_zygote_died_starts_a_new_one(monkeypatch):
    """Nothing checks the zygote before a run: the failed connection does, and the retry works.
    Its copies stop with it."""
    from cap_app.sandbox import runner

    server = SandboxServer()
    monkeypatch.setattr(runner, "_LIGHT", server)
    try:
        server.start()
        first = server.pid
        copies = zygote_processes(first)[1:]
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        assert run_program("print(6 * 7)").answer == "42"
        assert server.pid not in (None, first)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(map(_running, copies)):
            time.sleep(0.05)
        assert not any(map(_running, copies))
    finally:
        server.stop()


ORPHAN_CHECK = """\
from cap_app.sandbox import server_pids, start_servers
start_servers(with_sympy=False)
print(server_pids()["light"], flush=True)
import time
time.sleep(60)
"""


def test_zygote_stops_when_its_client_process_dies():
    """With its copies (one per CPU, up to four, serving the same socket)."""
    client = subprocess.Popen([sys.executable, "-c", ORPHAN_CHECK], stdout=subprocess.PIPE, text=True)
    zygote = int(client.stdout.readline())
    copies = zygote_processes(zygote)[1:]
    assert len(copies) == min(4, len(os.sched_getaffinity(0))) - 1
    os.kill(client.pid, signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(map(_running, [zygote, *copies])):
        time.sleep(0.05)
    assert not any(map(_running, [zygote, *copies]))


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"timeout_s": 0}, "timeout_s must be a number between 0.05 and 120, got 0"),
        ({"timeout_s": float("nan")}, "timeout_s must be a number between 0.05 and 120, got nan"),
        ({"memory_mb": 10}, "memory_mb must be a number between 64 and 16384, got 10"),
        ({"max_output_bytes": 0}, "max_output_bytes must be a number between 1 and 1.67772e+07, got 0"),
        ({"trace": "yes"}, "trace must be true or false, got 'yes'"),
        ({"max_trace_steps": True}, "max_trace_steps must be a number between 0 and 100000, got True"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError) as caught:
        run_program("print(1)", **settings)
    assert str(caught.value) == message


def test_programs_that_are_not_text_or_too_long(zygote_pids):
    assert run_program(b"print(1)").error == "the program must be text"
    too_long = run_program("x = 1\n" * 10_000)
    assert (too_long.status, too_long.error) == ("rejected", "program is too long (60000 characters, limit 50000)")
    nul = run_program("x = 1\0")
    assert (nul.status, nul.error) == ("error", "SyntaxError: source code string cannot contain null bytes")


def test_result_survives_json(zygote_pids):
    result = run_program("x = [1, 2]\nprint(sum(x))")
    assert ExecResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_zygote_does_not_inherit_secrets(monkeypatch):
    monkeypatch.setenv("CAP_TEST_SECRET_TOKEN", "hunter2")
    server = SandboxServer()
    try:
        server.start()
        with open(f"/proc/{server.pid}/environ", "rb") as environ:
            assert b"hunter2" not in environ.read()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "forged",
    [
        None,
        [],
        {"status": "pwned"},
        {"status": "ok", "stdout": 5},
        {"status": "ok", "trace": [{"line": 1}]},
        {"status": "ok", "trace": [["1", {}]]},
        {"status": "ok", "trace": [[1, {"a": 1}]]},
        {"status": "ok", "trace": [[1]]},
        {"status": "ok", "trace": [[True, {}]]},
        {"status": "ok", "trace": [[0, {}]]},
        {"status": "ok", "trace": [[3, {}]]},  # the program has 2 lines
        {"status": "ok", "error": 3},
        {"status": "ok", "stdout_truncated": None},
        {"status": "ok", "answer": ["42"]},
        {"status": "ok", "trace_truncated": "yes"},
    ],
)
def test_a_forged_result_from_a_child_becomes_an_error(forged):
    """What a child writes is checked: a program that escaped could write anything."""
    result = result_from_json(forged, "x = 1\nprint(x)")
    assert (result.status, result.error) == ("error", "the sandbox returned a malformed result")


def test_a_well_formed_result_keeps_its_fields_and_drops_unknown_ones():
    result = result_from_json(
        {"status": "ok", "stdout": "1\n", "answer": "1", "extra": "ignored", "trace": [[2, {"x": "\ud800"}]]},
        "x = 1\r\n    print(1)  \r\n",
    )
    assert (result.status, result.answer, result.trace[0].source) == ("ok", "1", "print(1)")
    assert result.trace[0].changed == {"x": "?"}  # a lone surrogate, made valid UTF-8


def test_a_sandbox_that_cannot_start_gives_an_error_result(monkeypatch):
    from cap_app.sandbox import runner

    monkeypatch.setattr(runner, "_LIGHT", SandboxServer())
    monkeypatch.setattr(runner.sys, "executable", "/nonexistent/python3")
    result = run_program("print(1)")
    assert result.status == "error"
    assert (
        result.error == "the sandbox server did not start: [Errno 2] No such file or directory: '/nonexistent/python3'"
    )


def test_lone_surrogates_come_back_as_valid_text(zygote_pids):
    result = run_program('x = "\\ud800"\nprint(x + "!")\ny = 1 / 0')
    assert (result.stdout, result.error) == ("?!\n", "line 3: division by zero")
    json.dumps(result.to_dict(), ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate


def test_modules_in_the_callers_folder_do_not_shadow_the_zygotes(tmp_path, monkeypatch):
    """The zygote runs without `site` in its own folder: a `statistics.py` where the caller works
    is never imported (it would run in the zygote and in every child)."""
    from cap_app.sandbox import runner

    marker = tmp_path / "imported"
    (tmp_path / "statistics.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    server = SandboxServer()
    monkeypatch.setattr(runner, "_LIGHT", server)
    try:
        assert run_program("import statistics\nprint(statistics.median([1, 3, 5]))").answer == "3"
        assert not marker.exists()
        with open(f"/proc/{server.pid}/cmdline", "rb") as cmdline:
            assert b"-S" in cmdline.read().split(b"\0")
    finally:
        server.stop()


def test_a_result_larger_than_the_socket_buffer_arrives_whole(zygote_pids):
    """3 MB of output: the child blocks on the connection until the client reads, and the
    zygote's last line still comes after all of it."""
    result = run_program("for i in range(30000):\n    print('x' * 100)", max_output_bytes=4 * 1024 * 1024, trace=False)
    assert (result.status, len(result.stdout), result.stdout_truncated) == ("ok", 30000 * 101, False)
