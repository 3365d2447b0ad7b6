"""Reproductions of RestrictedPython's published escapes, each stopped by the policy.

Advisories (https://github.com/zopefoundation/RestrictedPython/security/advisories):
- CVE-2023-37271: generator frames walked to the caller's globals (gi_frame.f_back...).
- CVE-2023-41039: str.format / string.Formatter reading attributes of their arguments.
- CVE-2024-47532: AttributeError.obj handing out the object a guard refused.
- CVE-2025-22153: try/except* type confusion (ExceptionGroup).
- GHSA-ffg3-p8fm-mjx2 (CVE-2026-55830): positional-only parameters shadowing guard hooks.
- GHSA-hp3v-5vw7-fx9w (CVE-2026-76825): string.Formatter.get_field traversing internally.
"""

from __future__ import annotations

import pytest

from tests.sandbox.hostile import cases, restricted, stopped_test

# CVE-2023-37271: a generator expression that reads its own frame's caller's globals.
CVE_2023_37271_GENERATOR_FRAMES = """\
q = (q.gi_frame.f_back.f_back.f_globals for _ in [1])
g = next(q)
os = g['__builtins__']['__import__']('os')
"""
# Same escape without attribute syntax: nothing that looks up attributes by name is reachable.
CVE_2023_37271_GETATTR_VARIANT = "q = (x for x in [1])\nf = getattr(q, 'gi_frame')"
# CVE-2023-41039: format reading a function's globals.
CVE_2023_41039_STR_FORMAT = "def f():\n    pass\nleak = '{0.__globals__[__builtins__]}'.format(f)\nprint(leak)"
CVE_2023_41039_FORMATTER = "import string\nprint(string.Formatter().vformat('{0.__globals__}', [print], {}))"
# CVE-2024-47532: the object refused to the program comes back on the AttributeError.
CVE_2024_47532_ATTRIBUTE_ERROR_OBJ = """\
import math
try:
    math.nonexistent
except AttributeError as e:
    leaked = e.obj
"""
CVE_2024_47532_STRING_MODULE = "import string\nprint(string.Formatter)"
# CVE-2025-22153: except* handlers see ExceptionGroup internals.
CVE_2025_22153_TRY_STAR = """\
try:
    raise ValueError(1)
except* ValueError as eg:
    leaked = eg.exceptions
"""
CVE_2025_22153_EXCEPTION_GROUP = "g = ExceptionGroup('x', [ValueError(1)])"
# GHSA-ffg3-p8fm-mjx2: positional-only parameters were not name-checked.
GHSA_FFG3_POSITIONAL_ONLY_GETATTR = """\
def f(_getattr_, /):
    return ().__class__
f(lambda o, n: getattr(o, n))
"""
GHSA_FFG3_POSITIONAL_ONLY_PRINT = "def f(_print_, /, x):\n    print(x)"
GHSA_FFG3_LAMBDA_POSITIONAL_ONLY = "g = lambda _getitem_, /: 1"
# GHSA-hp3v-5vw7-fx9w: Formatter.get_field walks attributes without the guard.
GHSA_HP3V_GET_FIELD = "import string\nobj, _ = string.Formatter().get_field('0.__class__', [1], {})"
GHSA_HP3V_FORMATTER_THROUGH_FORMAT = "fmt = '{}'.format\nobj = fmt.get_field('0.__class__', [1], {})"

CASES = cases(
    (CVE_2023_37271_GENERATOR_FRAMES, "rejected", restricted(1, "f_globals")),
    (CVE_2023_37271_GETATTR_VARIANT, "error", "line 2: name 'getattr' is not defined"),
    (CVE_2023_41039_STR_FORMAT, "error", "line 3: attribute or item access inside format fields is not allowed"),
    (CVE_2023_41039_FORMATTER, "rejected", "line 1: import of 'string' is not allowed"),
    (CVE_2024_47532_ATTRIBUTE_ERROR_OBJ, "error", "line 5: access to attribute 'obj' of an exception is not allowed"),
    (CVE_2024_47532_STRING_MODULE, "rejected", "line 1: import of 'string' is not allowed"),
    (CVE_2025_22153_TRY_STAR, "rejected", "line 1: TryStar statements are not allowed"),
    (CVE_2025_22153_EXCEPTION_GROUP, "error", "line 1: name 'ExceptionGroup' is not defined"),
    (
        GHSA_FFG3_POSITIONAL_ONLY_GETATTR,
        "rejected",
        'line 1: "_getattr_" is an invalid variable name because it starts with "_"',
    ),
    (
        GHSA_FFG3_POSITIONAL_ONLY_PRINT,
        "rejected",
        'line 1: "_print_" is an invalid variable name because it starts with "_"',
    ),
    (
        GHSA_FFG3_LAMBDA_POSITIONAL_ONLY,
        "rejected",
        'line 1: "_getitem_" is an invalid variable name because it starts with "_"',
    ),
    (GHSA_HP3V_GET_FIELD, "rejected", "line 1: import of 'string' is not allowed"),
    (
        GHSA_HP3V_FORMATTER_THROUGH_FORMAT,
        "error",
        "line 2: AttributeError: 'function' object has no attribute 'get_field'",
    ),
)


test_published_escape_is_stopped = stopped_test(CASES)


def test_attribute_error_carries_no_object():
    """The guard re-raises AttributeError without `obj` and without the original as context."""
    from cap_app.sandbox.policy import guarded_getattr

    secret = object.__new__(type("Secret", (), {}))
    with pytest.raises(AttributeError) as caught:
        guarded_getattr(secret, "missing")
    assert caught.value.obj is None and caught.value.__context__ is None
