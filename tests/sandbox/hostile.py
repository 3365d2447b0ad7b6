"""Helpers for the hostile-program tables: one `pytest.param` per named constant, and the one
test every table gets."""

from __future__ import annotations

import inspect

import pytest

from cap_app.sandbox import ExecResult


def cases(*table: tuple[str, str, str]) -> list:
    """Params (code, status, message) whose test ids are the constants' names."""
    caller = inspect.currentframe().f_back.f_globals
    names = {id(value): name for name, value in caller.items() if name.isupper() and isinstance(value, str)}
    return [pytest.param(code, status, message, id=names.get(id(code), code[:30])) for code, status, message in table]


def restricted(line: int, name: str) -> str:
    """RestrictedPython's refusal of an inspection attribute (gi_frame, f_globals, ...), worded once."""
    return f'line {line}: "{name}" is a restricted name, that is forbidden to access in RestrictedPython'


def assert_stopped(result: ExecResult, status: str, message: str) -> None:
    """The program was stopped with this status and this exact one-line message."""
    assert (result.status, result.error) == (status, message)
    assert result.answer is None or status == "ok"


def stopped_test(table: list, **limits):
    """The test of a table, written once: each program, run by `run_hostile` (with `limits`), is
    stopped as its row says. Assign it to a `test_...` name in the table's module."""

    @pytest.mark.parametrize("code, status, message", table)
    def test(run_hostile, code, status, message):
        assert_stopped(run_hostile(code, **limits), status, message)

    return test
