"""Generator, frame and traceback walks (gi_frame, f_back, f_globals, tb_frame), and exception
objects that carry internals."""

from __future__ import annotations

from tests.sandbox.hostile import cases, restricted, stopped_test

GENERATOR_FRAME = "g = (x for x in [1])\nf = g.gi_frame"
GENERATOR_CODE = "g = (x for x in [1])\nc = g.gi_code"
GENERATOR_YIELDFROM = "def f():\n    yield 1\ng = f()\nprint(g.gi_yieldfrom)"
FRAME_BACK_WALK = "g = (x for x in [1])\nglobals_ = g.gi_frame.f_back.f_back.f_globals"
FRAME_LOCALS = "def f():\n    yield 1\nprint(f().gi_frame.f_locals)"
TRACEBACK_FRAME = "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    fr = e.__traceback__.tb_frame"
TRACEBACK_NEXT = "try:\n    1 / 0\nexcept Exception as e:\n    t = e.tb_next"
EXCEPTION_WITH_TRACEBACK = "try:\n    1 / 0\nexcept Exception as e:\n    e2 = e.with_traceback(None)"
EXCEPTION_CONTEXT = "try:\n    1 / 0\nexcept Exception as e:\n    c = e.__context__"
ATTRIBUTE_ERROR_NAME = "try:\n    (1).foo\nexcept AttributeError as e:\n    print(e.name)"
KEY_ERROR_ADD_NOTE = "try:\n    {}['a']\nexcept KeyError as e:\n    e.add_note('x')"
BASE_EXCEPTION_NAME = "try:\n    pass\nexcept BaseException:\n    pass\nprint(BaseException)"
SYSTEM_EXIT = "raise SystemExit(3)"
KEYBOARD_INTERRUPT = "raise KeyboardInterrupt"
ASYNC_FUNCTION = "async def f():\n    return 1"
AWAIT_FRAME = "async def f():\n    await g()"
COROUTINE_FRAME = "def f(c):\n    return c.cr_frame"
ASYNC_GENERATOR_FRAME = "def f(a):\n    return a.ag_frame"
FUNCTION_DEFAULTS = "def f(a=1):\n    pass\nprint(f.__defaults__)"
STOP_ITERATION_VALUE = (
    "def g():\n    return 5\n    yield\ntry:\n    next(g())\nexcept StopIteration as e:\n    print(e.value)"
)

CASES = cases(
    (GENERATOR_FRAME, "rejected", restricted(2, "gi_frame")),
    (GENERATOR_CODE, "rejected", restricted(2, "gi_code")),
    (GENERATOR_YIELDFROM, "rejected", restricted(4, "gi_yieldfrom")),
    (FRAME_BACK_WALK, "rejected", restricted(2, "f_globals")),
    (FRAME_LOCALS, "rejected", restricted(3, "f_locals")),
    (TRACEBACK_FRAME, "rejected", restricted(4, "tb_frame")),
    (TRACEBACK_NEXT, "rejected", restricted(4, "tb_next")),
    (EXCEPTION_WITH_TRACEBACK, "error", "line 4: access to attribute 'with_traceback' of an exception is not allowed"),
    (EXCEPTION_CONTEXT, "rejected", 'line 4: "__context__" is an invalid attribute name because it starts with "_"'),
    (ATTRIBUTE_ERROR_NAME, "error", "line 4: access to attribute 'name' of an exception is not allowed"),
    (KEY_ERROR_ADD_NOTE, "error", "line 4: access to attribute 'add_note' of an exception is not allowed"),
    (BASE_EXCEPTION_NAME, "error", "line 5: name 'BaseException' is not defined"),
    (SYSTEM_EXIT, "error", "line 1: name 'SystemExit' is not defined"),
    (KEYBOARD_INTERRUPT, "error", "line 1: name 'KeyboardInterrupt' is not defined"),
    (ASYNC_FUNCTION, "rejected", "line 1: AsyncFunctionDef statements are not allowed"),
    (AWAIT_FRAME, "rejected", "line 1: AsyncFunctionDef statements are not allowed"),
    (COROUTINE_FRAME, "rejected", restricted(2, "cr_frame")),
    (ASYNC_GENERATOR_FRAME, "rejected", restricted(2, "ag_frame")),
    (FUNCTION_DEFAULTS, "rejected", 'line 3: "__defaults__" is an invalid attribute name because it starts with "_"'),
    (STOP_ITERATION_VALUE, "error", "line 7: access to attribute 'value' of an exception is not allowed"),
)


test_frame_walk_is_stopped = stopped_test(CASES)


EXCEPTION_ARGS = "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    print(e.args[0])"


def test_exception_args_stay_readable(run_hostile):
    result = run_hostile(EXCEPTION_ARGS)
    assert (result.status, result.answer) == ("ok", "division by zero")


GENERATORS = "def evens(n):\n    for i in range(n):\n        if i % 2 == 0:\n            yield i\nprint(sum(evens(10)))"


def test_generators_still_work(run_hostile):
    result = run_hostile(GENERATORS)
    assert (result.status, result.answer) == ("ok", "20")
