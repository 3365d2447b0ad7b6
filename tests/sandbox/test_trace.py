"""The line trace (program lines only, changed variables, truncation), error line mapping and
the answer convention."""

from __future__ import annotations

import pytest

from cap_app.sandbox import TraceStep, run_program

STRAIGHT_LINE = "a = 48 / 2\nb = 48 + a\nprint(b)"


def steps(result) -> list[tuple[int, str, dict]]:
    return [(step.line, step.source, step.changed) for step in result.trace]


def test_trace_lists_lines_sources_and_changes(zygote_pids):
    result = run_program(STRAIGHT_LINE)
    assert result.status == "ok" and result.answer == "72.0"
    assert result.trace == [
        TraceStep(1, "a = 48 / 2", {"a": "24.0"}),
        TraceStep(2, "b = 48 + a", {"b": "72.0"}),
        TraceStep(3, "print(b)", {}),
    ]
    assert not result.trace_truncated and result.duration_ms > 0


LOOP = "total = 0\nfor i in range(3):\n    total += i\nprint(total)"


def test_loops_repeat_their_lines(zygote_pids):
    result = run_program(LOOP)
    assert steps(result) == [
        (1, "total = 0", {"total": "0"}),
        (2, "for i in range(3):", {"i": "0"}),
        (3, "total += i", {}),
        (2, "for i in range(3):", {"i": "1"}),
        (3, "total += i", {"total": "1"}),
        (2, "for i in range(3):", {"i": "2"}),
        (3, "total += i", {"total": "3"}),
        (2, "for i in range(3):", {}),
        (4, "print(total)", {}),
    ]


FUNCTION_CALL = "def double(x):\n    y = x * 2\n    return y\nz = double(3)"


def test_calls_keep_execution_order(zygote_pids):
    result = run_program(FUNCTION_CALL)
    assert steps(result) == [
        (1, "def double(x):", {"double": "<function double>"}),
        (4, "z = double(3)", {"z": "6"}),
        (2, "y = x * 2", {"y": "6"}),
        (3, "return y", {}),
    ]


PRINTING_FUNCTION = "def show(x):\n    print(x)\n    return x\ny = show(2)"


def test_functions_that_print_start_at_their_first_line(zygote_pids):
    result = run_program(PRINTING_FUNCTION)
    assert [step.line for step in result.trace] == [1, 4, 2, 3]


IN_PLACE = "xs = []\nxs.append(5)\ncounts = {'a': 1}\ncounts['a'] = 2"


def test_in_place_changes_are_seen(zygote_pids):
    result = run_program(IN_PLACE)
    assert [step.changed for step in result.trace] == [
        {"xs": "[]"},
        {"xs": "[5]"},
        {"counts": "{'a': 1}"},
        {"counts": "{'a': 2}"},
    ]


def test_reprs_are_short(zygote_pids):
    result = run_program("s = 'a' * 1000\nxs = list(range(1000))")
    assert result.trace[0].changed["s"] == repr("a" * 1000)[:28] + "..." + repr("a" * 1000)[-29:]
    assert result.trace[1].changed["xs"] == "[0, 1, 2, 3, 4, 5, 6, 7, ...]"


def test_trace_is_capped_and_marked(zygote_pids):
    result = run_program("for i in range(100):\n    pass\nprint('done')", max_trace_steps=10)
    assert (result.status, result.answer) == ("ok", "done")
    assert len(result.trace) == 10 and result.trace_truncated


def test_trace_can_be_turned_off(zygote_pids):
    result = run_program(STRAIGHT_LINE, trace=False)
    assert (result.status, result.answer, result.trace, result.trace_truncated) == ("ok", "72.0", [], False)


def test_only_program_lines_are_traced(zygote_pids):
    program = (
        "import statistics\nfrom fractions import Fraction\n"
        "m = statistics.median([3, 1, 2])\nf = Fraction(1, 3) * 3\nprint(m, f)"
    )
    result = run_program(program)
    assert [step.line for step in result.trace] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "program, message",
    [
        ("# a comment\n\nx = 1\ny = x / 0", "line 4: division by zero"),
        ("def f():\n    return 1 / 0\n\nf()", "line 2: division by zero"),
        ("x = 1\r\ny = x + z\r\n", "line 2: name 'z' is not defined"),
        ("d = {}\nprint(d['missing'])", "line 2: KeyError: 'missing'"),
        ("xs = [1]\nxs[5]", "line 2: IndexError: list index out of range"),
        ("x = int('seven')", "line 1: ValueError: invalid literal for int() with base 10: 'seven'"),
        ("assert 1 == 2, 'no'", "line 1: AssertionError: no"),
        ("raise ValueError", "line 1: ValueError"),
        ("x = (1,\n", "line 1: SyntaxError: '(' was never closed"),
        ("if True:\nprint(1)", "line 2: SyntaxError: expected an indented block after 'if' statement on line 1"),
    ],
)
def test_errors_are_one_line_in_program_line_numbers(zygote_pids, program, message):
    result = run_program(program)
    assert result.error == message and result.status == "error" and result.answer is None


def test_partial_output_and_trace_survive_a_timeout(zygote_pids):
    result = run_program("print('started')\nwhile True:\n    pass", timeout_s=0.5)
    assert (result.status, result.error, result.stdout) == ("timeout", "time limit of 0.5 s exceeded", "started\n")
    assert result.trace[0].line == 1 and result.answer is None


@pytest.mark.parametrize(
    "program, answer",
    [
        ("print('step')\nprint(' 42 ')", "42"),
        ("print(5)\nprint()", "5"),
        ("answer = 12.5", "12.5"),
        ("def solution():\n    return 7 * 6", "42"),
        ("def solution():\n    print('The answer is', 9)", "The answer is 9"),
        ("answer = 3\ndef solution():\n    return 4", "3"),
        ("def main():\n    eggs = 16 - 3 - 4\n    print(eggs * 2)", "18"),  # defined, never called
        ("def main():\n    return 5\ndef solution():\n    return 6", "6"),  # solution() first
        ("def main(x):\n    return x", None),  # needs an argument: not an entry point we can call
        ("x = 1", None),
        ("print('\\ud800')", "?"),
    ],
)
def test_answer_convention(zygote_pids, program, answer):
    result = run_program(program)
    assert (result.status, result.answer) == ("ok", answer)


def test_solution_lines_are_traced(zygote_pids):
    result = run_program("def solution():\n    x = 6\n    return x * 7")
    assert [step.line for step in result.trace] == [1, 2, 3]
