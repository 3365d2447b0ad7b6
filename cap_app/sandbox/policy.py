"""The sandbox policy, in one place: what a program may write, call, import and touch.

Two layers, both allowlists (anything not reviewed is denied):
- compile time: `ProgramPolicy` (a RestrictedPython transformer) rejects constructs and rewrites
  attribute, item, iteration, print and import operations into calls to the guards below;
- run time: the guards and the builtins in `make_globals()`.
Every decision carries a one-line reason. Errors are returned, not raised (`check_program`).
The process around the program (limits, no files, no new processes) is in `worker.py`; it is
the second wall, for whatever gets past this one.
"""

from __future__ import annotations

import ast
import builtins
import decimal
import functools
import operator
import string
import sys
import types
from collections.abc import Callable
from typing import Any

from RestrictedPython import RestrictingNodeTransformer, compile_restricted_exec
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence
from RestrictedPython.transformer import INSPECT_ATTRIBUTES
from RestrictedPython.transformer import IOPERATOR_TO_STR as RestrictedPythonOperators

from cap_app.sandbox.config import MAX_PROGRAM_CHARS
from cap_app.sandbox.modules import FACADES, Facade, importable_names, is_sympy_object, no_strings

PROGRAM_FILENAME = "<program>"


class PolicyError(Exception):
    """Raised by a guard; its message is shown to the user as is."""


# ---------------------------------------------------------------- compile time


class ProgramPolicy(RestrictingNodeTransformer):
    """RestrictedPython's policy plus the sandbox's own denials (each visit_* says why)."""

    def visit_ClassDef(self, node: ast.ClassDef) -> Any:
        """Deny classes: math programs need none, and classes open dunder and metaclass tricks."""
        self.error(node, "class definitions are not allowed")

    importable = importable_names(with_sympy=False)

    def visit_Import(self, node: ast.Import) -> Any:
        """Allow only `import M` / `import M as N` for M in the facade allowlist."""
        for alias in node.names:
            if alias.name not in self.importable:
                self.error(node, f"import of '{alias.name}' is not allowed")
        return super().visit_Import(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> Any:
        """Allow `from M import name` only for names the facade of M exposes."""
        if node.level or node.module not in self.importable:
            self.error(node, f"import of '{'.' * node.level}{node.module or ''}' is not allowed")
            return node
        exposed = self.importable[node.module]
        for alias in node.names:
            if alias.name != "*" and alias.name not in exposed:
                self.error(node, f"import of '{node.module}.{alias.name}' is not allowed")
        return super().visit_ImportFrom(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        """Allow `xs[k] += v` (models count with it) as a guarded read and a guarded write:
        `_o = xs; _k = k; _write_(_o)[_k] = _inplacevar_('+=', _getitem_(_o, _k), v)`.
        Attribute and slice targets stay denied by RestrictedPython."""
        if not isinstance(node.target, ast.Subscript) or isinstance(node.target.slice, ast.Slice):
            return super().visit_AugAssign(node)
        target = self.node_contents_visit(node.target)
        value = self.visit(node.value)
        obj, key = self.gen_tmp_name(), self.gen_tmp_name()
        operator_text = ast.Constant(RestrictedPythonOperators[type(node.op)])
        statements = [
            ast.Assign([ast.Name(obj, ast.Store())], target.value),
            ast.Assign([ast.Name(key, ast.Store())], target.slice),
            ast.Assign(
                [ast.Subscript(_call("_write_", ast.Name(obj, ast.Load())), ast.Name(key, ast.Load()), ast.Store())],
                _call(
                    "_inplacevar_",
                    operator_text,
                    _call("_getitem_", ast.Name(obj, ast.Load()), ast.Name(key, ast.Load())),
                    value,
                ),
            ),
        ]
        for statement in statements:
            ast.copy_location(statement, node)
            ast.fix_missing_locations(statement)
        return statements

    def visit_Global(self, node: ast.Global) -> Any:
        """Allow `global` only for program names (underscore names are the guards)."""
        for name in node.names:
            self.check_name(node, name)
        return super().visit_Global(node)


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(ast.Name(name, ast.Load()), list(args), [])


def _line_message(error: str) -> str:
    """'Line 3: foo.' (RestrictedPython) -> 'line 3: foo' (the sandbox's wording)."""
    if error.startswith("Line "):
        error = "line " + error[len("Line ") :]
    return error.rstrip(".")


class SympyProgramPolicy(ProgramPolicy):
    """The same policy with the sympy facade importable (for the zygote that serves sympy)."""

    importable = importable_names(with_sympy=True)


def check_program(source: str, *, with_sympy: bool = False) -> tuple[types.CodeType | None, str | None, str]:
    """Compile under the policy: (code, None, "") or (None, one-line message, status)."""
    if len(source) > MAX_PROGRAM_CHARS:
        return None, f"program is too long ({len(source)} characters, limit {MAX_PROGRAM_CHARS})", "rejected"
    try:
        tree = ast.parse(source, PROGRAM_FILENAME, "exec")
    except SyntaxError as exc:
        where = f"line {exc.lineno}: " if exc.lineno else ""
        return None, f"{where}SyntaxError: {exc.msg}", "error"
    except (RecursionError, MemoryError):  # the parser's own stack limits
        return None, "the program cannot be parsed: it is nested too deeply", "error"
    except ValueError as exc:  # e.g. lone surrogates
        return None, f"the program cannot be parsed: {exc}", "error"
    try:
        policy = SympyProgramPolicy if with_sympy else ProgramPolicy
        result = compile_restricted_exec(tree, filename=PROGRAM_FILENAME, policy=policy)
    except (RecursionError, MemoryError):
        return None, "the program cannot be compiled: it is nested too deeply", "error"
    except (ValueError, SyntaxError) as exc:
        return None, f"the program cannot be compiled: {exc}", "error"
    if result.errors:
        return None, _line_message(result.errors[0]), "rejected"
    return result.code, None, ""


# ---------------------------------------------------------------- run time: guards

# Attributes of exception objects a program may read. Others carry internals: `obj` of
# AttributeError (CVE-2024-47532), tracebacks, `name`/`path` of ImportError.
_EXCEPTION_ATTRIBUTES = frozenset({"args"})
# Attributes denied on every object beyond the underscore rule.
_DENIED_ATTRIBUTES = INSPECT_ATTRIBUTES | {
    "mro",  # reaches `object` and the class hierarchy
    "format_map",  # str.format_map traverses attributes of its arguments
    "gi_running",
    "gi_suspended",  # generator internals, no use in math
}


class _FieldCheckingFormatter(string.Formatter):
    """str.format without traversal: '{0.attr}' and '{0[key]}' are refused."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        if "." in field_name or "[" in field_name:
            raise PolicyError("attribute or item access inside format fields is not allowed")
        return super().get_field(field_name, args, kwargs)


_FORMATTER = _FieldCheckingFormatter()


def safe_str_format(template: str, *args: Any, **kwargs: Any) -> str:
    """`'{:.2f}'.format(x)` for programs, minus field traversal (the str.format leak)."""
    return _FORMATTER.vformat(template, args, kwargs)


def _bound_format(template: str) -> Callable[..., str]:
    """`template.format` as a closure (a functools.partial would expose `.func`/`.args`)."""

    def format(*args: Any, **kwargs: Any) -> str:
        return safe_str_format(template, *args, **kwargs)

    return format


def guarded_getattr(obj: Any, name: str) -> Any:
    """`obj.name` in a program. Denied: private names, inspection attributes, modules,
    exception internals, formatter traversal; sympy methods are wrapped against strings."""
    if type(name) is not str:
        raise PolicyError("attribute names must be strings")
    if name.startswith("_") or name in _DENIED_ATTRIBUTES:
        raise PolicyError(f"access to attribute '{name}' is not allowed")
    if isinstance(obj, BaseException) and name not in _EXCEPTION_ATTRIBUTES:
        raise PolicyError(f"access to attribute '{name}' of an exception is not allowed")
    if isinstance(obj, string.Formatter) or (isinstance(obj, type) and issubclass(obj, string.Formatter)):
        raise PolicyError("string.Formatter is not allowed")
    if name == "format" and (isinstance(obj, str) or obj is str):
        return _bound_format(obj) if isinstance(obj, str) else safe_str_format
    missing = ""
    try:
        value = getattr(obj, name)
    except AttributeError as exc:  # re-raised below, outside this handler: no `obj`, no context
        missing = str(exc) if isinstance(obj, Facade) else f"'{type(obj).__name__}' object has no attribute '{name}'"
    if missing:
        raise AttributeError(missing)
    if isinstance(value, types.ModuleType):
        raise PolicyError(f"access to a module through '{name}' is not allowed")
    if callable(value) and is_sympy_object(obj):
        return no_strings(value, name)
    return value


def guarded_getitem(obj: Any, key: Any) -> Any:
    """`obj[key]`: any container of the program; modules cannot be indexed."""
    if isinstance(obj, (Facade, types.ModuleType)):
        raise PolicyError("modules cannot be indexed")
    return obj[key]


def guarded_iter(obj: Any) -> Any:
    """Every iteration of a program (for, comprehensions, unpacking, the wrapped builtins)."""
    if isinstance(obj, (Facade, types.ModuleType)):
        raise PolicyError("modules cannot be iterated")
    return iter(obj)


# Objects a program may assign items or attributes on: its own containers and decimal contexts
# (precision/rounding, validated by decimal itself). Everything else is read-only.
_WRITABLE_TYPES = (dict, list, decimal.Context)


def guarded_write(obj: Any) -> Any:
    """Target of `obj[k] = v`, `obj.a = v`, `del obj[k]`."""
    if isinstance(obj, _WRITABLE_TYPES):
        return obj
    raise PolicyError(f"'{type(obj).__name__}' objects cannot be modified in the sandbox")


_INPLACE_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "|=": operator.ior,
    "^=": operator.ixor,
    "&=": operator.iand,
    "@=": operator.imatmul,
}


def guarded_inplacevar(op: str, target: Any, value: Any) -> Any:
    """`x += v` and friends on plain names."""
    return _INPLACE_OPERATORS[op](target, value)


def guarded_apply(func: Callable, *args: Any, **kwargs: Any) -> Any:
    """Calls written with *args/**kwargs; the arguments were unpacked by Python already."""
    return func(*args, **kwargs)


# Modules that C code of allowed functions imports lazily through the program's `__import__`
# (datetime.strptime -> _strptime). Import statements cannot name them (the policy rejects it),
# so only that C code receives these, and only when already imported by the zygote.
_INTERNAL_IMPORTS = frozenset({"_strptime"})


def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    """`import` at run time: the facade of an allowlisted module, never a module object."""
    if level == 0 and name in FACADES:
        return FACADES[name]
    if level == 0 and name in _INTERNAL_IMPORTS and name in sys.modules:
        return sys.modules[name]
    raise ImportError(f"import of '{name}' is not allowed")


class OutputLimitExceeded(BaseException):
    """Raised into the program when it prints past the limit (BaseException: not swallowed
    by `except Exception`; the worker reports the limit even if the program catches it)."""


class PrintSink:
    """The program's stdout: every `print` of every scope appends here, up to a byte limit."""

    def __init__(self, max_bytes: int, on_truncation: Callable[[], None] = lambda: None):
        self.max_bytes = max_bytes
        self.on_truncation = on_truncation  # e.g. stop a program that swallows the exception
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False

    def write(self, text: str) -> None:
        if self.truncated:
            raise OutputLimitExceeded()
        encoded = len(text.encode("utf-8", "replace"))
        if self.size + encoded > self.max_bytes:
            room = self.max_bytes - self.size
            self.parts.append(text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore"))
            self.size = self.max_bytes
            self.truncated = True
            self.on_truncation()
            raise OutputLimitExceeded()
        self.parts.append(text)
        self.size += encoded

    def text(self) -> str:
        return "".join(self.parts)


class ScopePrinter:
    """What `print` and `printed` use in one scope; `_print_` builds one per scope, all writing
    to the run's single sink (RestrictedPython calls `_print_(_getattr_)`)."""

    def __init__(self, sink: PrintSink, _getattr_: Any = None):
        self.sink = sink

    def __call__(self) -> str:  # the `printed` variable
        return self.sink.text()

    def _call_print(
        self, *objects: Any, sep: Any = " ", end: Any = "\n", file: Any = None, flush: bool = False
    ) -> None:
        if file is not None:
            raise PolicyError("print(file=...) is not allowed")
        builtins.print(*objects, sep=sep, end=end, file=self.sink)


# ---------------------------------------------------------------- run time: builtins
# C builtins that iterate their argument bypass `_getiter_`, so RestrictedPython 9 dropped them;
# these wrappers route the iteration through `guarded_iter` first.


def _sum(iterable: Any, /, start: Any = 0) -> Any:
    return builtins.sum(guarded_iter(iterable), start)


def _extreme(func: Callable) -> Callable:
    def extreme(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 1:
            return func(guarded_iter(args[0]), **kwargs)
        return func(*args, **kwargs)

    extreme.__name__ = func.__name__
    return extreme


def _collect(factory: Callable) -> Callable:
    def collect(iterable: Any = (), /) -> Any:
        return factory(guarded_iter(iterable))

    collect.__name__ = factory.__name__
    return collect


def _dict(*args: Any, **kwargs: Any) -> dict:
    if args and not isinstance(args[0], dict):
        args = (guarded_iter(args[0]),) + args[1:]
    return dict(*args, **kwargs)


def _sorted(iterable: Any, /, *, key: Any = None, reverse: bool = False) -> list:
    return builtins.sorted(guarded_iter(iterable), key=key, reverse=reverse)


def _reversed(sequence: Any) -> Any:
    if isinstance(sequence, (list, tuple, str, range, dict)):
        return builtins.reversed(sequence)
    return builtins.reversed(builtins.list(guarded_iter(sequence)))


def _enumerate(iterable: Any, start: int = 0) -> Any:
    return builtins.enumerate(guarded_iter(iterable), start)


def _zip(*iterables: Any, strict: bool = False) -> Any:
    return builtins.zip(*(guarded_iter(it) for it in iterables), strict=strict)


def _map(func: Callable, *iterables: Any) -> Any:
    return builtins.map(func, *(guarded_iter(it) for it in iterables))


def _filter(func: Any, iterable: Any) -> Any:
    return builtins.filter(func, guarded_iter(iterable))


def _any(iterable: Any) -> bool:
    return builtins.any(guarded_iter(iterable))


def _all(iterable: Any) -> bool:
    return builtins.all(guarded_iter(iterable))


def _iter(obj: Any) -> Any:
    return guarded_iter(obj)


_PLAIN_BUILTINS = (
    # values and conversions
    "None",
    "True",
    "False",
    "bool",
    "int",
    "float",
    "complex",
    "str",
    "abs",
    "round",
    "pow",
    "divmod",
    "len",
    "range",
    "slice",
    "chr",
    "ord",
    "bin",
    "oct",
    "hex",
    "repr",
    "format",
    "isinstance",
    "callable",
    "next",
    # exceptions a program may raise or catch (no BaseException/SystemExit/KeyboardInterrupt:
    # catching those is how a program would swallow the sandbox's own stops)
    "Exception",
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "IndexError",
    "KeyError",
    "LookupError",
    "MemoryError",
    "NameError",
    "NotImplementedError",
    "OverflowError",
    "RecursionError",
    "RuntimeError",
    "StopIteration",
    "TypeError",
    "ValueError",
    "ZeroDivisionError",
)
# Deliberately absent: type/object/super/classmethod/staticmethod/property (class tricks),
# getattr/setattr/delattr/hasattr/vars/dir/globals/locals/id (introspection), eval/exec/compile/
# __import__/breakpoint/help (code and imports; imports go through `guarded_import`),
# open/input/print (I/O; print is rewritten to the sink), bytes/bytearray/memoryview (buffers),
# issubclass (class hierarchy probing).

_WRAPPED_BUILTINS = {
    "sum": _sum,
    "min": _extreme(builtins.min),
    "max": _extreme(builtins.max),
    "list": _collect(builtins.list),
    "tuple": _collect(builtins.tuple),
    "set": _collect(builtins.set),
    "frozenset": _collect(builtins.frozenset),
    "dict": _dict,
    "sorted": _sorted,
    "reversed": _reversed,
    "enumerate": _enumerate,
    "zip": _zip,
    "map": _map,
    "filter": _filter,
    "any": _any,
    "all": _all,
    "iter": _iter,
}


_PROGRAM_BUILTINS = {name: getattr(builtins, name) for name in _PLAIN_BUILTINS} | _WRAPPED_BUILTINS
_PROGRAM_BUILTINS["__import__"] = guarded_import


def make_globals(sink: PrintSink) -> dict[str, Any]:
    """A fresh namespace for one run: the builtins allowlist plus the guards. The allowlist is
    shared, not copied: programs cannot name `__builtins__` (no `_` names), and every run is a
    fresh fork that ends with its process, so no run sees what another did; a copy per run cost
    each child about fifty copy-on-write page faults."""
    return {
        "__builtins__": _PROGRAM_BUILTINS,
        "__name__": "__main__",
        "_getattr_": guarded_getattr,
        "_getitem_": guarded_getitem,
        "_getiter_": guarded_iter,
        "_write_": guarded_write,
        "_inplacevar_": guarded_inplacevar,
        "_apply_": guarded_apply,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_print_": functools.partial(ScopePrinter, sink),
    }
