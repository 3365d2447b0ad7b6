"""Limits of one sandboxed run; the CLI (`python -m cap_app exec`) and the app build this."""

from __future__ import annotations

import dataclasses

MAX_PROGRAM_CHARS = 50_000  # model programs are a few hundred characters

# Bounds on the settings themselves: settings come from users (CLI flags, app widgets), so a
# value outside these is refused with a clear message instead of disabling a limit.
BOUNDS = {
    "timeout_s": (0.05, 120.0),
    "memory_mb": (64, 16384),
    "max_output_bytes": (1, 16 * 1024 * 1024),
    "max_trace_steps": (0, 100_000),
}


@dataclasses.dataclass
class SandboxConfig:
    # Resource limits
    timeout_s: float = dataclasses.field(
        default=5.0, metadata={"help": "Wall-clock limit for one program, in seconds (CPU time is capped too)."}
    )
    memory_mb: int = dataclasses.field(
        default=512, metadata={"help": "Memory the program may allocate on top of the pre-imported interpreter, in MB."}
    )
    max_output_bytes: int = dataclasses.field(
        default=64 * 1024, metadata={"help": "Printed output kept; a program printing more is stopped with an error."}
    )
    # Trace
    trace: bool = dataclasses.field(
        default=True, metadata={"help": "Record a line-by-line trace with the variables each line changed."}
    )
    max_trace_steps: int = dataclasses.field(
        default=1000, metadata={"help": "Trace steps kept; later lines run untraced and the trace is marked truncated."}
    )

    def __post_init__(self) -> None:
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{name} must be a number between {low:g} and {high:g}, got {value!r}")
        if not isinstance(self.trace, bool):
            raise ValueError(f"trace must be true or false, got {self.trace!r}")
        self.memory_mb = int(self.memory_mb)
        self.max_output_bytes = int(self.max_output_bytes)
        self.max_trace_steps = int(self.max_trace_steps)
        self.timeout_s = float(self.timeout_s)
