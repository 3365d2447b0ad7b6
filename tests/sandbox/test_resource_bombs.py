"""CPU, memory, output, recursion and process bombs, huge ints and signal tampering: each
stops with the limit's own message, and nothing of one run is seen by the next."""

from __future__ import annotations

import pytest

from tests.sandbox.hostile import assert_stopped, cases, stopped_test

FAST = {"timeout_s": 0.5}
SMALL = {"memory_mb": 128, "timeout_s": 3}
TIMEOUT = "time limit of 0.5 s exceeded"
OUT_OF_MEMORY = "memory limit of 128 MB exceeded"

INFINITE_LOOP = "while True:\n    pass"
SWALLOWED_TIMEOUT = "while True:\n    try:\n        while True:\n            pass\n    except:\n        pass"
LOOP_IN_FINALLY = "try:\n    while True:\n        pass\nfinally:\n    while True:\n        pass"
C_LEVEL_LOOP = "print(sum(range(10 ** 15)))"
HUGE_POWER_CPU = "x = 10 ** 10 ** 8"
FACTORIAL_CPU = "import math\nx = math.factorial(10 ** 7)"
RECURSIVE_LOOP_IN_GENERATOR = "def g():\n    while True:\n        yield 1\nprint(sum(g()))"
BIG_LIST = "x = [0] * 10 ** 9"
BIG_STRING = "s = 'a' * 10 ** 10"
GROWING_LIST = "x = []\nwhile True:\n    x.append([0] * 1000)"
INFINITE_COUNT_TO_LIST = "import itertools\nx = list(itertools.count())"
DICT_COMPREHENSION_BOMB = "d = {i: i for i in range(10 ** 9)}"
SWALLOWED_MEMORY_ERROR = "try:\n    x = [0] * 10 ** 9\nexcept MemoryError:\n    pass"
HUGE_INT_PRINT = "print(10 ** 5000)"
HUGE_INT_STR = "s = str(2 ** 20000)"
DEEP_RECURSION = "def f(n):\n    return f(n + 1)\nf(0)"
MUTUAL_RECURSION = "def a(n):\n    return b(n)\ndef b(n):\n    return a(n)\na(1)"
DEEP_NESTED_REPR = "x = []\nfor i in range(100000):\n    x = [x]\nprint(x)"
DEEP_PARENTHESES = "x = " + "(" * 300 + "1" + ")" * 300
DEEP_UNARY_CHAIN = "x = " + "-" * 40_000 + "1"
LONG_ATTRIBUTE_CHAIN = "x = " + "a." * 20_000 + "b"
HUGE_OUTPUT_LOOP = "while True:\n    print('spam' * 100)"
HUGE_SINGLE_PRINT = "print('x' * 10 ** 6)"
CAUGHT_OUTPUT_LIMIT = "while True:\n    try:\n        print('y' * 1000)\n    except:\n        pass"
FORK_BOMB = "import os\nwhile True:\n    os.fork()"
THREAD_BOMB = "import threading\nwhile True:\n    threading.Thread(target=print).start()"
LOW_LEVEL_THREADS = "import _thread"
MULTIPROCESSING_POOL = "from multiprocessing import Pool"
SIGNAL_TAMPERING = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)"
ALARM_RESET = "import signal\nsignal.alarm(0)"
RESOURCE_LIMITS = "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (-1, -1))"
FAULTHANDLER = "import faulthandler"
SLEEP = "import time\ntime.sleep(100)"

CASES = cases(
    (INFINITE_LOOP, "timeout", TIMEOUT),
    (SWALLOWED_TIMEOUT, "timeout", TIMEOUT),
    (LOOP_IN_FINALLY, "timeout", TIMEOUT),
    (C_LEVEL_LOOP, "timeout", TIMEOUT),
    (HUGE_POWER_CPU, "timeout", TIMEOUT),
    (FACTORIAL_CPU, "timeout", TIMEOUT),
    (RECURSIVE_LOOP_IN_GENERATOR, "timeout", TIMEOUT),
)
test_cpu_bomb_hits_the_time_limit = stopped_test(CASES, **FAST)

MEMORY_CASES = cases(
    (BIG_LIST, "memory", OUT_OF_MEMORY),
    (BIG_STRING, "memory", OUT_OF_MEMORY),
    (GROWING_LIST, "memory", OUT_OF_MEMORY),
    (INFINITE_COUNT_TO_LIST, "memory", OUT_OF_MEMORY),
    (DICT_COMPREHENSION_BOMB, "memory", OUT_OF_MEMORY),
)
test_memory_bomb_hits_the_memory_limit = stopped_test(MEMORY_CASES, **SMALL)


def test_swallowed_memory_error_stays_inside_the_limit(run_hostile):
    """A program may catch its own MemoryError; it got no memory past the limit either way."""
    result = run_hostile(SWALLOWED_MEMORY_ERROR, **SMALL)
    assert (result.status, result.error) == ("ok", None)


OTHER_CASES = cases(
    (
        HUGE_INT_PRINT,
        "error",
        "line 1: ValueError: Exceeds the limit (4300 digits) for integer string conversion; "
        "use sys.set_int_max_str_digits() to increase the limit",
    ),
    (
        HUGE_INT_STR,
        "error",
        "line 1: ValueError: Exceeds the limit (4300 digits) for integer string conversion; "
        "use sys.set_int_max_str_digits() to increase the limit",
    ),
    (DEEP_RECURSION, "error", "line 2: maximum recursion depth exceeded"),
    (DEEP_NESTED_REPR, "error", "line 4: maximum recursion depth exceeded"),
    (DEEP_PARENTHESES, "error", "line 1: SyntaxError: too many nested parentheses"),
    (DEEP_UNARY_CHAIN, "error", "the program cannot be parsed: it is nested too deeply"),
    (LONG_ATTRIBUTE_CHAIN, "error", "the program cannot be parsed: it is nested too deeply"),
    (FORK_BOMB, "rejected", "line 1: import of 'os' is not allowed"),
    (THREAD_BOMB, "rejected", "line 1: import of 'threading' is not allowed"),
    (LOW_LEVEL_THREADS, "rejected", "line 1: import of '_thread' is not allowed"),
    (MULTIPROCESSING_POOL, "rejected", "line 1: import of 'multiprocessing' is not allowed"),
    (SIGNAL_TAMPERING, "rejected", "line 1: import of 'signal' is not allowed"),
    (ALARM_RESET, "rejected", "line 1: import of 'signal' is not allowed"),
    (RESOURCE_LIMITS, "rejected", "line 1: import of 'resource' is not allowed"),
    (FAULTHANDLER, "rejected", "line 1: import of 'faulthandler' is not allowed"),
    (SLEEP, "rejected", "line 1: import of 'time' is not allowed"),
)


test_other_bomb_is_stopped = stopped_test(OTHER_CASES)


def test_mutual_recursion_stops_in_one_of_its_functions(run_hostile):
    """Which of the two lines overflows depends on the stack depth the run starts at."""
    result = run_hostile(MUTUAL_RECURSION)
    assert result.status == "error"
    assert result.error in ("line 2: maximum recursion depth exceeded", "line 4: maximum recursion depth exceeded")


@pytest.mark.parametrize(
    "code",
    [HUGE_OUTPUT_LOOP, HUGE_SINGLE_PRINT, CAUGHT_OUTPUT_LIMIT],
    ids=["HUGE_OUTPUT_LOOP", "HUGE_SINGLE_PRINT", "CAUGHT_OUTPUT_LIMIT"],
)
def test_huge_output_is_truncated_and_marked(run_hostile, code):
    result = run_hostile(code, timeout_s=3)
    assert_stopped(result, "error", "output truncated at 64 KiB")
    assert result.stdout_truncated
    assert 60 * 1024 < len(result.stdout.encode()) <= 64 * 1024


def test_output_limit_is_configurable(run_hostile):
    result = run_hostile("for i in range(100):\n    print(i)", max_output_bytes=100)
    assert_stopped(result, "error", "output truncated at 100 bytes")
    assert result.stdout.startswith("0\n1\n2\n") and len(result.stdout) == 100


def test_huge_int_stays_short_in_the_trace(run_hostile):
    result = run_hostile("x = 7 ** 100000\ny = 1")
    assert result.status == "ok"
    assert result.trace[0].changed == {"x": "<int with 280736 bits>"}


DECIMAL_PRECISION_SET = "import decimal\ndecimal.getcontext().prec = 3\nprint(decimal.Decimal(1) / 3)"
DECIMAL_PRECISION_READ = "import decimal\nprint(decimal.Decimal(1) / 3)"


def test_no_state_survives_into_the_next_run(run_hostile):
    assert run_hostile(DECIMAL_PRECISION_SET).answer == "0.333"
    assert run_hostile(DECIMAL_PRECISION_READ).answer == "0.3333333333333333333333333333"
    assert run_hostile("x = 41").status == "ok"
    assert run_hostile("print(x)").error == "line 1: name 'x' is not defined"


def test_runs_after_a_bomb_are_unaffected(run_hostile):
    run_hostile(BIG_LIST, **SMALL)
    run_hostile(INFINITE_LOOP, **FAST)
    result = run_hostile("print(6 * 7)")
    assert (result.status, result.answer) == ("ok", "42")
