"""Line trace of a program's own lines: which line ran, and which variables it changed.

`sys.settrace` fires for every Python frame; only frames of the program (whose globals are the
program's namespace) are followed, so guards, facades and libraries never appear. Frames are
told apart by their globals, not by `frame.f_code`: reading `f_code` raises an audit event,
and the code gate's hook (codegate.py) would then run at every call. A step is opened when a
line starts (keeping execution order across calls) and its changes are filled in when the next
line of the same frame starts or the frame returns.
"""

from __future__ import annotations

import reprlib
import sys
import types
from typing import Any

from cap_app.sandbox.modules import Facade

# Values whose identity tells whether they changed; anything else (lists, dicts, objects) may
# change in place, so its short repr is compared instead.
_IMMUTABLE = (int, float, complex, str, bool, type(None), bytes, range, types.FunctionType, Facade)


class _ShortRepr(reprlib.Repr):
    """reprlib with the sandbox's exceptions: huge ints, functions and modules stay short."""

    def __init__(self) -> None:
        super().__init__()  # Python 3.11's Repr takes no limits as arguments
        self.maxlevel, self.maxstring, self.maxlong, self.maxother = 3, 60, 40, 60
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = 8
        self.maxdict = 6

    def repr1(self, obj: Any, level: int) -> str:
        if isinstance(obj, types.FunctionType):
            return f"<function {obj.__name__}>"
        if isinstance(obj, int) and not isinstance(obj, bool) and obj.bit_length() > 10_000:
            return f"<int with {obj.bit_length()} bits>"
        try:
            return super().repr1(obj, level)
        except Exception:  # a repr that fails must not stop the program
            return f"<{type(obj).__name__}>"


_SHORT_REPR = _ShortRepr()


def short_repr(value: Any) -> str:
    """The repr shown in the trace. Numbers, the usual values of math programs, skip reprlib:
    their repr is short already, and each function a child runs costs it page faults."""
    kind = type(value)
    if kind is float or kind is bool or value is None or (kind is int and value.bit_length() < 127):
        return repr(value)  # at most 40 characters, as reprlib would allow
    return _SHORT_REPR.repr(value)


MAX_TRACE_CHARS = 2_000_000  # a trace past this many characters is truncated like a long one
MAX_CHANGES_PER_STEP = 30  # a line that changes more variables (e.g. a huge unpacking) shows 30


class LineTracer:
    """Collects `[line, {name: short repr}]` steps, at most `max_steps`. A line's source text is
    not copied: the client has the program (runner.result_from_json)."""

    def __init__(self, line_count: int, max_steps: int, program_globals: dict[str, Any]):
        self.line_count = line_count
        self.program_globals = program_globals
        self.max_steps = max_steps
        self.steps: list[list[Any]] = []
        self.truncated = False
        self._chars = 0
        self._open: dict[types.FrameType, tuple[list[Any], dict[str, tuple[Any, str]]]] = {}

    def start(self) -> None:
        sys.settrace(self._on_event)

    def stop(self) -> None:
        sys.settrace(None)
        self._open.clear()

    def _on_event(self, frame: types.FrameType, event: str, arg: Any) -> Any:
        """The one trace function, global and per frame (fewer functions: each one a child calls
        costs it page faults). Frames not compiled from the program are not followed."""
        if event == "call":
            return self._on_event if frame.f_globals is self.program_globals and not self.truncated else None
        if self.truncated:
            return None
        opened = self._open.get(frame)
        if event == "line":
            if (
                opened is None
                and frame.f_lineno == frame.f_code.co_firstlineno
                and "_print" in frame.f_code.co_varnames
            ):
                # RestrictedPython starts a function that prints with `_print = _print_(_getattr_)`
                # on its `def` line: not a line the program's author wrote, so not a step.
                return self._on_event
            snapshot = self._record_changes(frame, opened)
            lineno = frame.f_lineno
            if 1 <= lineno <= self.line_count:
                if len(self.steps) >= self.max_steps or self._chars > MAX_TRACE_CHARS:
                    self.truncated = True
                    sys.settrace(None)
                    return None
                step = [lineno, {}]
                self._chars += 16
                self.steps.append(step)
                self._open[frame] = (step, snapshot)
        elif event == "return" and opened is not None:
            self._record_changes(frame, opened)
            del self._open[frame]
        return self._on_event

    def _record_changes(
        self, frame: types.FrameType, opened: tuple[list[Any], dict[str, tuple[Any, str]]] | None
    ) -> dict[str, tuple[Any, str]]:
        """Fill the frame's open step (if any) with the variables its line changed; return the
        frame's variables now, as (value, short repr or "" for values compared by identity)."""
        before, changed = (opened[1], opened[0][1]) if opened is not None else ({}, None)
        after: dict[str, tuple[Any, str]] = {}
        for name, value in frame.f_locals.items():
            if name[:1] == "_" or not name.isidentifier():  # the guards RestrictedPython injects
                continue
            old = before.get(name)
            if isinstance(value, _IMMUTABLE):
                after[name] = (value, "")
                if changed is not None and (old is None or old[0] is not value) and len(changed) < MAX_CHANGES_PER_STEP:
                    text = changed[name] = short_repr(value)
                    self._chars += len(name) + len(text)
            else:
                text = short_repr(value)
                after[name] = (value, text)
                if (
                    changed is not None
                    and (old is None or old[0] is not value or old[1] != text)
                    and len(changed) < MAX_CHANGES_PER_STEP
                ):
                    changed[name] = text
                    self._chars += len(name) + len(text)
        return after
