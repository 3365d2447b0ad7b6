"""The importable modules of the sandbox, each served as a facade exposing only chosen names.

A real module object must never reach a program: from any module a program could walk to
`sys.modules` (e.g. `fractions.sys.modules['os']`). A `Facade` is a plain read-only namespace
holding the allowed functions and classes themselves, never a module. sympy is the one library
whose functions and objects parse strings with `eval` (`sympify`). Its parser is closed in the
process that serves sympy programs (`sympy_reader.close_sympy_parser`), so a string that reaches it by any
route is refused; the entrances are guarded too, for a clearer message: every sympy callable
a program can reach refuses strings in its arguments (see `no_strings`), and the policy's
`_getattr_` wraps methods of sympy objects the same way. Behind both, `codegate` refuses any
compilation of text while a program runs.
"""

from __future__ import annotations

import _strptime  # noqa: F401 (imported lazily by datetime.strptime; children cannot import)
import collections
import datetime
import decimal
import fractions
import functools
import heapq  # noqa: F401 (imported lazily by Counter.most_common)
import itertools
import math
import statistics
import types
from collections.abc import Callable
from typing import Any


class Facade:
    """A read-only stand-in for a module: only the names it was built with exist."""

    __slots__ = ("_facade_name", "_facade_members")

    def __init__(self, name: str, members: dict[str, Any]):
        for value in members.values():
            if isinstance(value, types.ModuleType):
                raise TypeError(f"facade {name!r} must not expose a module")
        object.__setattr__(self, "_facade_name", name)
        object.__setattr__(self, "_facade_members", dict(members))

    def __getattr__(self, attr: str) -> Any:
        members = object.__getattribute__(self, "_facade_members")
        if attr.startswith("_") or attr not in members:
            name = object.__getattribute__(self, "_facade_name")
            raise AttributeError(f"module '{name}' has no attribute '{attr}' in the sandbox")
        return members[attr]

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError("modules are read-only in the sandbox")

    def __repr__(self) -> str:
        return f"<module '{object.__getattribute__(self, '_facade_name')}'>"


def facade_names(facade: Facade) -> frozenset[str]:
    """The names a facade exposes (kept off the class so programs cannot call it)."""
    return frozenset(object.__getattribute__(facade, "_facade_members"))


def contains_string(value: Any, depth: int = 0) -> bool:
    """True when `value` is or holds (in lists, tuples, sets, dicts) a str."""
    if isinstance(value, str):
        return True
    if depth > 20:  # a deeper structure is refused as if it held a string
        return True
    if isinstance(value, dict):
        return any(contains_string(k, depth + 1) or contains_string(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(contains_string(item, depth + 1) for item in value)
    return False


def no_strings(func: Callable, name: str) -> Callable:
    """Wrap a sympy callable so that strings (which sympy would `eval`) are refused."""

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if contains_string(args) or contains_string(kwargs):
            raise TypeError(f"sympy's {name}() does not accept text in the sandbox; build expressions from symbols()")
        return func(*args, **kwargs)

    return guarded


def is_sympy_object(obj: Any) -> bool:
    """Objects (and classes) defined by sympy, whose methods may parse strings."""
    cls = obj if isinstance(obj, type) else type(obj)
    return getattr(cls, "__module__", "").startswith(("sympy", "mpmath"))


def _public(module: types.ModuleType, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        name: getattr(module, name)
        for name in dir(module)
        if not name.startswith("_") and name not in skip and not isinstance(getattr(module, name), types.ModuleType)
    }


# symbols()/Symbol() read their string as names, never as code: the only sympy entry points
# that may take text.
_SYMPY_NAME_READERS = ("symbols", "Symbol")
# A subset for algebra on word problems; no sympify/parse_expr/lambdify/eval-like entry points.
_SYMPY_NAMES = (
    "Abs",
    "E",
    "Eq",
    "Float",
    "Integer",
    "Rational",
    "binomial",
    "ceiling",
    "divisors",
    "expand",
    "factor",
    "factorial",
    "factorint",
    "floor",
    "gcd",
    "isprime",
    "lcm",
    "linsolve",
    "N",
    "nsimplify",
    "oo",
    "pi",
    "prime",
    "primefactors",
    "Matrix",
    "simplify",
    "solve",
    "sqrt",
    "Sum",
    "summation",
)


def _sympy_members() -> dict[str, Any]:
    import sympy  # only in the zygote that serves sympy programs: it makes forks ~10x slower

    members: dict[str, Any] = {name: getattr(sympy, name) for name in _SYMPY_NAME_READERS}
    for name in _SYMPY_NAMES:
        value = getattr(sympy, name)
        members[name] = no_strings(value, name) if callable(value) else value
    return members


def _facade(module: types.ModuleType, *names: str) -> Facade:
    """The facade of `module` with the named members, or all its public ones when none are named:
    the allowlist below names each module once, and its members by name."""
    return Facade(module.__name__, {name: getattr(module, name) for name in names} if names else _public(module))


def build_facades() -> dict[str, Facade]:
    """The allowlist of importable names: module name -> facade (sympy: `enable_sympy`)."""
    return {
        # Pure functions on numbers; math holds no module references.
        "math": _facade(math),
        # Exact arithmetic on fractions of integers.
        "fractions": _facade(fractions, "Fraction"),
        # Decimal money arithmetic; contexts only set precision and rounding.
        "decimal": _facade(
            decimal,
            "Decimal",
            "getcontext",
            "localcontext",
            *(name for name in dir(decimal) if name.startswith("ROUND_")),
        ),
        # Descriptive statistics; functions only (no random sampling, no I/O).
        "statistics": _facade(
            statistics,
            "mean",
            "fmean",
            "median",
            "median_low",
            "median_high",
            "mode",
            "multimode",
            "pstdev",
            "pvariance",
            "stdev",
            "variance",
            "harmonic_mean",
            "geometric_mean",
        ),
        # Combinatorics and iteration helpers; all are C iterators over given data.
        "itertools": _facade(itertools),
        # reduce only: partial/lru_cache wrap callables in ways the trace cannot follow.
        "functools": _facade(functools, "reduce"),
        # Counting containers (dict subclasses).
        "collections": _facade(collections, "Counter", "defaultdict", "OrderedDict", "deque"),
        # Calendar arithmetic for date word problems.
        "datetime": _facade(datetime, "date", "datetime", "timedelta"),
    }


FACADES = build_facades()
# A program naming none of these runs in the light zygote; one that does, in the zygote that
# called `enable_sympy`.
SLOW_MODULES = frozenset({"sympy"})


def importable_names(with_sympy: bool) -> dict[str, frozenset[str]]:
    """What `import`/`from ... import` may name, for the compiler: the facades' names, plus
    sympy's (known without importing sympy, so any process can compile sympy programs)."""
    names = {module: facade_names(facade) for module, facade in FACADES.items() if module not in SLOW_MODULES}
    if with_sympy:
        names["sympy"] = frozenset(_SYMPY_NAME_READERS + _SYMPY_NAMES)
    return names


def enable_sympy() -> None:
    """Add the sympy facade (algebra subset, string arguments refused; see module docstring)."""
    FACADES["sympy"] = Facade("sympy", _sympy_members())
