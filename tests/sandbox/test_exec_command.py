"""`python -m cap_app exec FILE [--json]`: the sandbox from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

from cap_app.cli import main

PROGRAM = "apples = 48 / 2\ntotal = 48 + apples\nprint(total)\n"


def test_json_output_is_the_exec_result(zygote_pids, tmp_path, capsys):
    path = tmp_path / "program.py"
    path.write_text(PROGRAM)
    assert main(["exec", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["status"], result["answer"], result["error"]) == ("ok", "72.0", None)
    assert result["trace"][1] == {"line": 2, "source": "total = 48 + apples", "changed": {"total": "72.0"}}
    assert result["walls"][0] == "rlimits" and "seccomp" in result["walls"]  # see test_walls.py


def test_summary_output_is_readable(zygote_pids, tmp_path, capsys):
    path = tmp_path / "program.py"
    path.write_text(PROGRAM)
    assert main(["exec", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("status: ok (") and lines[1:4] == ["answer: 72.0", "stdout:", "  72.0"]
    assert lines[4:] == [
        "trace (3 steps):",
        "     1 | apples = 48 / 2      apples=24.0",
        "     2 | total = 48 + apples  total=72.0",
        "     3 | print(total)",
    ]


def test_failed_program_exits_1_with_the_error(zygote_pids, tmp_path, capsys):
    path = tmp_path / "program.py"
    path.write_text("import os\n")
    assert main(["exec", str(path), "--no-trace"]) == 1
    assert capsys.readouterr().out.splitlines()[1] == "error: line 1: import of 'os' is not allowed"


def test_limits_come_from_options(zygote_pids, tmp_path, capsys):
    path = tmp_path / "program.py"
    path.write_text("while True:\n    pass\n")
    assert main(["exec", str(path), "--json", "--timeout-s", "0.3"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "time limit of 0.3 s exceeded"


def test_unusable_input_exits_2_without_traceback(tmp_path, capsys):
    assert main(["exec", str(tmp_path / "missing.py")]) == 2
    assert capsys.readouterr().err == f"error: cannot read {tmp_path / 'missing.py'}: No such file or directory\n"
    binary = tmp_path / "binary.py"
    binary.write_bytes(b"\xff\xfe\x00")
    assert main(["exec", str(binary)]) == 2
    assert capsys.readouterr().err == f"error: {binary} is not UTF-8 text\n"
    assert main(["exec", str(binary), "--memory-mb", "1"]) == 2
    assert capsys.readouterr().err == "error: memory_mb must be a number between 64 and 16384, got 1\n"


def test_stdin_through_the_real_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "cap_app", "exec", "-", "--json"],
        input="print(6 * 7)\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answer"] == "42"
