"""What happens inside the forked child that runs one program.

The zygote forks one child per connection; the child walls itself in (`seal`): own process
group, no inherited descriptors but the client's connection, no new processes, no file writes,
when started as root an empty root folder and the unprivileged user nobody, and, as any user,
the kernel walls of `walls.py` (Landlock from the zygote, a seccomp allowlist). It reads the
request (the program, compiled under the policy by the client, and its settings) from the
connection and sets the run up (`ProgramRun`). Then come the run's limits (`limit`): CPU and
address space, no room for new descriptors (so no files, sockets or pipes), bounded recursion
and int-to-str digits, a wall-clock alarm; then the code gate (`codegate.arm`: no text becomes
code from here on, by any route). It runs the program with the line tracer, finds the
answer, and writes one JSON line back. Nothing here is trusted to survive the program: the
zygote (`zygote.py`) kills the group at the deadline and reports how the child ended.
"""

from __future__ import annotations

import json.encoder
import math
import os
import resource
import signal
import sys
import types
from typing import Any

from cap_app.sandbox import codegate, walls
from cap_app.sandbox.config import SandboxConfig
from cap_app.sandbox.policy import (
    PROGRAM_FILENAME,
    OutputLimitExceeded,
    PolicyError,
    PrintSink,
    check_program,
    make_globals,
)
from cap_app.sandbox.protocol import MAX_REQUEST_BYTES, read_request
from cap_app.sandbox.result import clean_text
from cap_app.sandbox.tracer import LineTracer

RESULT_FD = 3  # the client's connection, after sealing: 0-2 are /dev/null, nothing above 3 is open
MEMORY_RESERVE = 64 * 1024 * 1024  # headroom released after a MemoryError to build the result
RECURSION_LIMIT = 400  # enough for recursive math helpers; far below the C stack
INT_MAX_STR_DIGITS = 4300  # CPython's default, restated: str() of a huge int is refused quickly
NOBODY = 65534
_SELF_EXPLAINING = (NameError, ZeroDivisionError, RecursionError, PolicyError, ImportError)


class TimeLimitExceeded(BaseException):
    """Raised into the program by the wall-clock alarm (again every 50 ms if swallowed)."""


class _Alarm:
    """Stops the program from outside its control flow: at the wall-clock limit, or soon after
    it printed past the output limit. The exception is raised again every 50 ms if swallowed;
    the zygote's kill is the backstop. One SIGALRM handler serves every alarm: installed once
    (in the zygote, before any fork), so a child only sets its timer."""

    current: _Alarm | None = None
    handler_installed = False

    def __init__(self) -> None:
        self.armed = False
        self.timed_out = False
        self._exception: type[BaseException] = TimeLimitExceeded

    def arm(self, seconds: float) -> None:
        if not _Alarm.handler_installed:
            signal.signal(signal.SIGALRM, _Alarm._ring)
            _Alarm.handler_installed = True
        _Alarm.current = self
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def stop_for_output(self) -> None:
        if self.armed:
            self._exception = OutputLimitExceeded
            signal.setitimer(signal.ITIMER_REAL, 0.05)

    def disarm(self) -> None:
        self.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)

    @staticmethod
    def _ring(signum: int, frame: Any) -> None:
        alarm = _Alarm.current
        if alarm is None or not alarm.armed:
            return
        alarm.timed_out = alarm.timed_out or alarm._exception is TimeLimitExceeded
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        raise alarm._exception()


def format_bytes(count: int) -> str:
    if count % (1024 * 1024) == 0:
        return f"{count // (1024 * 1024)} MiB"
    if count % 1024 == 0:
        return f"{count // 1024} KiB"
    return f"{count} bytes"


def address_space() -> int:
    """This process's virtual size in bytes (a forked child starts with its parent's)."""
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        return int(os.read(fd, 100).split()[0]) * os.sysconf("SC_PAGE_SIZE")
    finally:
        os.close(fd)


class Inherited:
    """What every child takes from the zygote as it was when set up (`set_up_zygote`)."""

    __slots__ = ("address_space", "descriptor_limit", "walls")

    def __init__(self, address_space: int, descriptor_limit: int, walls: tuple[str, ...]):
        self.address_space, self.descriptor_limit, self.walls = address_space, descriptor_limit, walls


def set_up_zygote() -> Inherited:
    """The limits every run shares, set once in the zygote and so inherited by each child (each
    call a child makes costs it page faults): no core files, bounded recursion and int-to-str
    digits; no new privileges, the network namespace and Landlock (`walls.set_up`, which also
    finds whether children can load the seccomp filter); the code gate's audit hook, armed by
    each child (`codegate`). Also measures what children need to know of the zygote: its address
    space (a program's `memory_mb` comes on top; what the zygote allocates later is not counted)
    and the descriptor numbers to close."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.setrecursionlimit(RECURSION_LIMIT)
    sys.set_int_max_str_digits(INT_MAX_STR_DIGITS)
    size = address_space()  # before Landlock (in walls.set_up) forbids reading /proc
    codegate.install()
    return Inherited(size, resource.getrlimit(resource.RLIMIT_NOFILE)[0], walls.set_up())


def seal(result_fd: int, devnull_fd: int, empty_root: str, inherited: Inherited) -> None:
    """Before the program: own process group, only the connection open (as fd 3, blocking;
    stdin/out/err on the zygote's /dev/null), when started as root: `empty_root` (an empty
    folder only root may enter) as `/`, then the user nobody, so no path leads anywhere; and
    the kernel walls the zygote found (walls.py; raises if one fails: no run without it)."""
    os.setpgid(0, 0)  # signal dispositions stay the zygote's: SIGINT and SIGPIPE ignored, SIGALRM ours
    for fd in (0, 1, 2):
        os.dup2(devnull_fd, fd)
    os.dup2(result_fd, RESULT_FD)
    os.closerange(RESULT_FD + 1, inherited.descriptor_limit)
    os.set_blocking(RESULT_FD, True)  # the zygote's copy is idle until this process has gone
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    if os.getuid() == 0:  # root ignores RLIMIT_NPROC and may read anything: become nobody
        os.chroot(empty_root)
        os.chdir("/")
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    if "seccomp" in inherited.walls:  # last: it forbids most of the calls above (Landlock, if
        walls.install_seccomp()  # any, came from the zygote)


def limit(config: SandboxConfig, base_address_space: int) -> None:
    """The run's own limits; afterwards no descriptor can be opened (files, sockets, pipes).
    `base_address_space` is the interpreter's size: `memory_mb` comes on top of it."""
    memory_limit = base_address_space + config.memory_mb * 1024 * 1024
    cpu_seconds = math.ceil(config.timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit + MEMORY_RESERVE))
    resource.setrlimit(resource.RLIMIT_NOFILE, (RESULT_FD + 1, RESULT_FD + 1))


def release_memory_reserve() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def program_line(exc: BaseException) -> int | None:
    """The program's own line where `exc` was raised (the deepest program frame)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == PROGRAM_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_error(exc: BaseException) -> str:
    """'line 3: name 'x' is not defined' / 'line 5: KeyError: 'a''."""
    message = one_line(str(exc))
    if isinstance(exc, RecursionError):
        message = "maximum recursion depth exceeded"
    elif not isinstance(exc, _SELF_EXPLAINING) or not message:
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    line = program_line(exc)
    return f"line {line}: {message}" if line else message


def _to_text(value: Any) -> str | None:
    try:
        text = str(value)
    except Exception:  # e.g. str() of an int past the digit limit
        return None
    return one_line(clean_text(text), 1000)


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return one_line(clean_text(lines[-1]), 1000) if lines else None


ENTRY_POINTS = ("solution", "main")  # small models often define one and never call it


def _program_function_without_arguments(value: Any) -> bool:
    """A function the program defined that can be called with no arguments."""
    if not isinstance(value, types.FunctionType) or value.__code__.co_filename != PROGRAM_FILENAME:
        return False
    code = value.__code__
    return code.co_argcount == len(value.__defaults__ or ()) and code.co_kwonlyargcount == len(
        value.__kwdefaults__ or {}
    )


def find_answer(namespace: dict[str, Any], sink: PrintSink) -> str | None:
    """The CaP convention: last printed line; else `answer`; else what `solution()` (or, failing
    that, `main()`) prints or returns, called without arguments."""
    printed = _last_line(sink.text())
    if printed is not None:
        return printed
    answer = namespace.get("answer")
    if answer is not None and not callable(answer):
        return _to_text(answer)
    for name in ENTRY_POINTS:
        function = namespace.get(name)
        if _program_function_without_arguments(function):
            value = function()
            printed = _last_line(sink.text())
            if printed is not None:
                return printed
            return None if value is None else _to_text(value)
    return None


def execute(source: str, config: SandboxConfig, *, with_sympy: bool = False) -> dict[str, Any]:
    """Compile and run `source` in this process; the result as a dict (see `ProgramRun.run`)."""
    code, error, status = check_program(source, with_sympy=with_sympy)
    if code is None:
        return {"status": status, "error": error}
    return ProgramRun(code, source, config).run()


class ProgramRun:
    """One program's run, set up (namespace, output sink, alarm, tracer) apart from running it:
    the child sets it up before the run's limits apply, so only the program counts against them."""

    def __init__(self, code: types.CodeType, source: str, config: SandboxConfig):
        self.code, self.config = code, config
        self.alarm = _Alarm()
        self.sink = PrintSink(config.max_output_bytes, on_truncation=self.alarm.stop_for_output)
        self.namespace = make_globals(self.sink)
        line_count = source.count("\n") + source.count("\r") - source.count("\r\n") + 1  # ast's line breaks
        self.tracer = LineTracer(line_count, config.max_trace_steps, self.namespace) if config.trace else None

    def run(self) -> dict[str, Any]:
        """Run the program in this (already isolated) process; the result as a dict."""
        config, alarm, sink, tracer = self.config, self.alarm, self.sink, self.tracer
        status, error, answer = "ok", None, None
        try:
            try:
                alarm.arm(config.timeout_s)
                if tracer:
                    tracer.start()
                exec(self.code, self.namespace)
                answer = find_answer(self.namespace, sink)
            finally:
                alarm.disarm()
                if tracer:
                    tracer.stop()
        except BaseException as exc:  # everything the program does ends here
            alarm.disarm()
            if tracer:
                tracer.stop()
            if isinstance(exc, MemoryError):
                release_memory_reserve()
                status, error = "memory", f"memory limit of {config.memory_mb} MB exceeded"
            elif not isinstance(exc, (TimeLimitExceeded, OutputLimitExceeded)):
                status, error = "error", describe_error(exc)
        if alarm.timed_out:
            status, error = "timeout", f"time limit of {config.timeout_s:g} s exceeded"
        elif sink.truncated and status != "memory":
            status, error = "error", f"output truncated at {format_bytes(config.max_output_bytes)}"
        return {  # texts as the program made them (maybe lone surrogates): the client cleans them
            "status": status,
            "stdout": sink.text(),
            "error": error,
            "answer": answer if status == "ok" else None,
            "trace": tracer.steps if tracer else [],  # [line, {name: short repr}] each
            "trace_truncated": bool(tracer and tracer.truncated),
            "stdout_truncated": sink.truncated,
        }


# json.dumps's own C encoder (ASCII output, no indent), called directly: dumps, encode and
# iterencode are Python layers that cost a child page faults on every run. Results are plain
# dicts, lists, strings, numbers and booleans, built here, so no circularity check is needed.
_encode_json = json.encoder.c_make_encoder(
    None, None, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
)


def result_line(result: dict[str, Any]) -> bytes:
    """One result as the JSON line the child writes."""
    return "".join(_encode_json(result, 0)).encode("ascii") + b"\n"


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_all(fd: int, limit: int) -> bytes:
    """Everything until end of file; ValueError past `limit` bytes."""
    chunks, size = [], 0
    while chunk := os.read(fd, 1 << 16):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"request larger than {format_bytes(limit)}")
        chunks.append(chunk)
    return b"".join(chunks)


def child_main(conn_fd: int, devnull_fd: int, empty_root: str, inherited: Inherited) -> None:
    """Entry point of the forked child: seal, read the request from the client's connection,
    limit, run, write the result back on it; never returns. The zygote reports how the child
    ended once it has gone, so nothing here needs to outlive the program."""
    out_fd = conn_fd
    try:
        seal(conn_fd, devnull_fd, empty_root, inherited)
        out_fd = RESULT_FD
        try:
            source, code, config = read_request(read_all(RESULT_FD, MAX_REQUEST_BYTES))
        except Exception as exc:
            payload = result_line({"status": "error", "error": f"bad sandbox request: {one_line(str(exc))}"})
        else:
            run = ProgramRun(code, source, config)
            limit(config, inherited.address_space)
            codegate.arm(code)  # from here on no text becomes code in this process
            payload = result_line(run.run())
    except BaseException as exc:  # a failure of the sandbox itself, reported, never raised
        try:
            release_memory_reserve()
        except Exception:
            pass
        payload = result_line({"status": "error", "error": f"sandbox failure: {one_line(repr(exc))}"})
    try:
        write_all(out_fd, payload)
    finally:
        os._exit(0)
