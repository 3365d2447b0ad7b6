"""What one sandboxed run of a program produced: `run_program`'s result, the one shape the engine,
`python -m cap_app exec` and the trace views read."""

from __future__ import annotations

import dataclasses
from typing import Literal

Status = Literal["ok", "error", "timeout", "rejected", "memory"]


@dataclasses.dataclass
class TraceStep:
    """One executed line of the program: its number, its source, the variables it changed."""

    line: int
    source: str
    changed: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> short repr


@dataclasses.dataclass
class ExecResult:
    status: Status
    stdout: str = ""
    error: str | None = None  # one line, in the program's own line numbers
    answer: str | None = None  # last printed line, or `answer` / `solution()` when nothing printed
    trace: list[TraceStep] = dataclasses.field(default_factory=list)
    trace_truncated: bool = False
    stdout_truncated: bool = False
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ExecResult:
        data = dict(data)
        data["trace"] = [TraceStep(**step) for step in data.get("trace", [])]
        return cls(**data)


def clean_text(text: str) -> str:
    """Text that survives JSON and UTF-8 (programs may print lone surrogates)."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")
