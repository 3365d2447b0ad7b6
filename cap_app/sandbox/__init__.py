"""Restricted, isolated execution of model-written programs, with line-level traces.

    from cap_app.sandbox import run_program
    result = run_program("x = 3 * 4\nprint(x)")   # ExecResult(status="ok", answer="12", ...)

Layers: `policy` (what a program may do; RestrictedPython), `modules` (import facades),
`worker` (the isolated child), `walls` (its kernel walls: seccomp, Landlock, namespaces),
`zygote` (the fork server), `runner` (the client), `tracer`.
The runner's names are imported on first use: the zygote imports this package too, and must
not carry the client's `threading`/`subprocess` (threading's after-fork hook alone costs each
forked child about a millisecond).
"""

from cap_app.sandbox.config import SandboxConfig
from cap_app.sandbox.result import ExecResult, TraceStep

_RUNNER_NAMES = ("run_program", "sandbox_walls", "server_pids", "start_servers", "stop_servers")
__all__ = ["ExecResult", "SandboxConfig", "TraceStep", *_RUNNER_NAMES]


def __getattr__(name: str):
    if name in _RUNNER_NAMES:
        from cap_app.sandbox import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'cap_app.sandbox' has no attribute '{name}'")
