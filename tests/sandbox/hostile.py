"""Helpers for the hostile-program tables: one `pytest.param` per named constant."""

from __future__ import annotations

import inspect

import pytest

from cap_app.sandbox import ExecResult


def cases(*table: tuple[str, str, str]) -> list:
    """Params (code, status, message) whose test ids are the constants' names."""
    caller = inspect.currentframe().f_back.f_globals
    names = {id(value): name for name, value in caller.items() if name.isupper() and isinstance(value, str)}
    return [pytest.param(code, status, message, id=names.get(id(code), code[:30])) for code, status, message in table]


def assert_stopped(result: ExecResult, status: str, message: str) -> None:
    """The program was stopped with this status and this exact one-line message."""
    assert (result.status, result.error) == (status, message)
    assert result.answer is None or status == "ok"
