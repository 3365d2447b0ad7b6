"""No new code while a program runs: an audit hook that refuses every text-to-code step.

The policy (policy.py) keeps eval/exec/compile, modules and frames out of a program's reach,
and the facades (modules.py) guard the library entry points they know. But a library can turn
text into code by a route nobody listed: sympy's `sympify` hands every string it meets, in any
iterable (a deque, a zip, a dict view), to its parser, which `eval`s it. CPython raises an
audit event for every compilation of source, every exec of a code object and every code object
built from bytes, whoever asks; this hook, armed in the child just before the program starts
and never disarmed, refuses them all. So the only code that runs in a child is the program
itself and what was loaded before it, whatever route a string takes.

One exception is reviewed: sympy's monomial code generator (`MonomialOps._build`) compiles
functions from templates filled with integers only (the number of generators of a polynomial
ring); `solve` and `factor` need it. Its frame is recognised by its code object, which a
program cannot reach (underscore names are refused by the policy).

The hook is installed in the zygote (`install`, before any fork) and armed per child (`arm`);
unarmed it returns at once, so the zygote's own imports and compiles are untouched.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from cap_app.sandbox.policy import PolicyError

# Events that make code: from text (compile; eval/exec of a string compile first), from bytes
# (marshal, the code constructor), or run a code object (exec, eval of code).
_CODE_EVENTS = frozenset({"compile", "exec", "code.__new__", "marshal.loads", "marshal.load"})


class _Gate:
    """The hook's state, one object so that arming a child writes a single page."""

    __slots__ = ("installed", "armed", "program", "generators")

    def __init__(self) -> None:
        self.installed = self.armed = False
        self.program: types.CodeType | None = None
        self.generators: frozenset[types.CodeType] = frozenset()


_GATE = _Gate()


def _trusted_generators() -> frozenset[types.CodeType]:
    """Code objects of the reviewed code generators that are loaded in this process."""
    monomials = sys.modules.get("sympy.polys.monomials")
    return frozenset({monomials.MonomialOps._build.__code__}) if monomials is not None else frozenset()


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _GATE.armed:
        return
    if event.startswith("ctypes."):
        raise PolicyError("native code (ctypes) is not allowed in the sandbox")
    if event not in _CODE_EVENTS:
        return
    if event == "exec" and args and args[0] is _GATE.program:
        return
    if sys._getframe(1).f_code in _GATE.generators:
        return
    raise PolicyError("turning text into code is not allowed in the sandbox")


def install() -> None:
    """Add the hook to this process (once; audit hooks cannot be removed). Call it in the
    zygote after the libraries are loaded, so the generators it trusts are known."""
    if not _GATE.installed:
        sys.addaudithook(_hook)
        _GATE.installed = True
    _GATE.generators = _trusted_generators()


def arm(program: types.CodeType) -> None:
    """From now on in this process only `program` (and the trusted generators) may make or run
    code. For a forked child only: it is never undone."""
    _GATE.program = program
    _GATE.armed = True
