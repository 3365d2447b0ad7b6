"""Import tricks: only facades of allowlisted modules can be imported, and no facade leads to
a real module object (from which `sys.modules['os']` would be one step away)."""

from __future__ import annotations

import types
import warnings

import pytest

from cap_app.sandbox.modules import FACADES, Facade, enable_sympy, facade_names
from tests.sandbox.hostile import cases, stopped_test

IMPORT_OS = "import os"
IMPORT_SYS = "import sys"
IMPORT_SUBPROCESS = "import subprocess"
IMPORT_CTYPES = "import ctypes"
IMPORT_SOCKET = "import socket"
IMPORT_BUILTINS = "import builtins"
IMPORT_IMPORTLIB = "import importlib"
IMPORT_PICKLE = "import pickle"
IMPORT_GC = "import gc"
IMPORT_INSPECT = "import inspect"
IMPORT_TYPES = "import types"
IMPORT_IO = "import io"
IMPORT_PATHLIB = "import pathlib"
IMPORT_RANDOM = "import random"
IMPORT_DOTTED = "import os.path"
IMPORT_ALIAS_ALLOWED_NAME = "import os as math"
IMPORT_SUBMODULE_OF_ALLOWED = "import math.os"
RELATIVE_IMPORT = "from . import secrets"
STAR_IMPORT = "from math import *"
FROM_FACADE_MODULE_ATTRIBUTE = "from fractions import sys"
FROM_FACADE_PRIVATE = "from decimal import _decimal"
FACADE_MODULE_ATTRIBUTE = "import fractions\nprint(fractions.math)"
FACADE_LEAK_VIA_FUNCTION = "import statistics\nprint(statistics.mean.__globals__)"
DUNDER_IMPORT = "m = __import__('os')"
IMPORT_INSIDE_FUNCTION = "def f():\n    import os\n    return os"
SYMPY_SYMPIFY = "import sympy\nsympy.sympify('1')"
SYMPY_PARSE_EXPR = "from sympy import parse_expr"
SYMPY_STRING_TO_SOLVE = "import sympy\nprint(sympy.solve(\"__import__('os').system('true')\"))"
SYMPY_STRING_IN_SUBS = "import sympy\nx = sympy.symbols('x')\nprint(x.subs(x, \"__import__('os').getpid()\"))"
SYMPY_STRING_IN_LIST = "import sympy\nprint(sympy.simplify(['1', 2]))"
SYMPY_STRING_IN_DICT = "import sympy\nx = sympy.symbols('x')\nprint((x + 1).subs({x: 'os'}))"
SYMPY_LAMBDIFY = "import sympy\nf = sympy.lambdify"

CASES = cases(
    (IMPORT_OS, "rejected", "line 1: import of 'os' is not allowed"),
    (IMPORT_SYS, "rejected", "line 1: import of 'sys' is not allowed"),
    (IMPORT_SUBPROCESS, "rejected", "line 1: import of 'subprocess' is not allowed"),
    (IMPORT_CTYPES, "rejected", "line 1: import of 'ctypes' is not allowed"),
    (IMPORT_SOCKET, "rejected", "line 1: import of 'socket' is not allowed"),
    (IMPORT_BUILTINS, "rejected", "line 1: import of 'builtins' is not allowed"),
    (IMPORT_IMPORTLIB, "rejected", "line 1: import of 'importlib' is not allowed"),
    (IMPORT_PICKLE, "rejected", "line 1: import of 'pickle' is not allowed"),
    (IMPORT_GC, "rejected", "line 1: import of 'gc' is not allowed"),
    (IMPORT_INSPECT, "rejected", "line 1: import of 'inspect' is not allowed"),
    (IMPORT_TYPES, "rejected", "line 1: import of 'types' is not allowed"),
    (IMPORT_IO, "rejected", "line 1: import of 'io' is not allowed"),
    (IMPORT_PATHLIB, "rejected", "line 1: import of 'pathlib' is not allowed"),
    (IMPORT_RANDOM, "rejected", "line 1: import of 'random' is not allowed"),
    (IMPORT_DOTTED, "rejected", "line 1: import of 'os.path' is not allowed"),
    (IMPORT_ALIAS_ALLOWED_NAME, "rejected", "line 1: import of 'os' is not allowed"),
    (IMPORT_SUBMODULE_OF_ALLOWED, "rejected", "line 1: import of 'math.os' is not allowed"),
    (RELATIVE_IMPORT, "rejected", "line 1: import of '.' is not allowed"),
    (STAR_IMPORT, "rejected", 'line 1: "*" imports are not allowed'),
    (FROM_FACADE_MODULE_ATTRIBUTE, "rejected", "line 1: import of 'fractions.sys' is not allowed"),
    (FROM_FACADE_PRIVATE, "rejected", "line 1: import of 'decimal._decimal' is not allowed"),
    (
        FACADE_MODULE_ATTRIBUTE,
        "error",
        "line 2: AttributeError: module 'fractions' has no attribute 'math' in the sandbox",
    ),
    (
        FACADE_LEAK_VIA_FUNCTION,
        "rejected",
        'line 2: "__globals__" is an invalid attribute name because it starts with "_"',
    ),
    (DUNDER_IMPORT, "rejected", 'line 1: "__import__" is an invalid variable name because it starts with "_"'),
    (IMPORT_INSIDE_FUNCTION, "rejected", "line 2: import of 'os' is not allowed"),
    (SYMPY_SYMPIFY, "error", "line 2: AttributeError: module 'sympy' has no attribute 'sympify' in the sandbox"),
    (SYMPY_PARSE_EXPR, "rejected", "line 1: import of 'sympy.parse_expr' is not allowed"),
    (
        SYMPY_STRING_TO_SOLVE,
        "error",
        "line 2: TypeError: sympy's solve() does not accept text in the sandbox; build expressions from symbols()",
    ),
    (
        SYMPY_STRING_IN_SUBS,
        "error",
        "line 3: TypeError: sympy's subs() does not accept text in the sandbox; build expressions from symbols()",
    ),
    (
        SYMPY_STRING_IN_LIST,
        "error",
        "line 2: TypeError: sympy's simplify() does not accept text in the sandbox; build expressions from symbols()",
    ),
    (
        SYMPY_STRING_IN_DICT,
        "error",
        "line 3: TypeError: sympy's subs() does not accept text in the sandbox; build expressions from symbols()",
    ),
    (SYMPY_LAMBDIFY, "error", "line 2: AttributeError: module 'sympy' has no attribute 'lambdify' in the sandbox"),
)


test_import_trick_is_stopped = stopped_test(CASES)


def _reachable(value, depth: int, seen: set[int]):
    """Every value reachable through public (non-underscore) attributes, `depth` steps deep."""
    if id(value) in seen or depth < 0:
        return
    seen.add(id(value))
    yield value
    for name in dir(value):
        if name.startswith("_"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # sympy's deprecated aliases met on the walk
                child = getattr(value, name)
        except Exception:  # properties that need an instance, deprecated aliases
            continue
        yield from _reachable(child, depth - 1, seen)


def test_no_facade_reaches_a_module_object():
    enable_sympy()
    assert set(FACADES) == {
        "math",
        "fractions",
        "decimal",
        "statistics",
        "itertools",
        "functools",
        "collections",
        "datetime",
        "sympy",
    }
    for facade in FACADES.values():
        assert not isinstance(facade, types.ModuleType)
        for name in facade_names(facade):
            for value in _reachable(getattr(facade, name), depth=2, seen=set()):
                assert not isinstance(value, types.ModuleType), (facade, name, value)


def test_facade_exposes_only_its_names():
    math_facade = FACADES["math"]
    assert isinstance(math_facade, Facade)
    assert math_facade.sqrt(16) == 4
    with pytest.raises(AttributeError):
        math_facade.sys  # noqa: B018 (the access is the test)
    with pytest.raises(AttributeError):
        math_facade.pi = 3


ALLOWED_IMPORTS = """\
import math
import math as m
from fractions import Fraction
from decimal import Decimal
from statistics import mean
from itertools import combinations
from functools import reduce
from collections import Counter
from datetime import date, timedelta
print(m.isqrt(17), Fraction(1, 3) * 3, Decimal('0.1') + Decimal('0.2'), mean([1, 2, 3, 6]),
      len(list(combinations(range(5), 2))), reduce(lambda a, b: a * b, [1, 2, 3, 4]),
      Counter('hello')['l'], (date(2024, 3, 1) - timedelta(days=1)).day, math.floor(2.5))
"""


def test_allowed_imports_work(run_hostile):
    result = run_hostile(ALLOWED_IMPORTS)
    assert result.status == "ok", result.error
    assert result.answer == "4 1 0.3 3 10 24 2 29 2"


SYMPY_ALGEBRA = """\
from sympy import symbols, Eq, solve
x = symbols('x')
print(solve(Eq(3 * x + 5, 20), x)[0])
"""


def test_sympy_algebra_works(run_hostile):
    result = run_hostile(SYMPY_ALGEBRA)
    assert (result.status, result.answer) == ("ok", "5")
