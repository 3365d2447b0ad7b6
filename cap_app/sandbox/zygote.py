"""The fork server ("zygote"): a clean interpreter with the sandbox pre-imported that forks one
child per program, so a run costs a fork instead of Python's start-up.

`runner.py` starts it as `python -m cap_app.sandbox.zygote SOCKET_PATH [--sympy]` (two
zygotes: sympy makes every fork about ten times slower, so only programs that name it go to the
zygote that imported it). It prints `ready` once imports and warm-up are done, then serves one
request per connection on the Unix socket: the client sends a JSON line `{"source", "config"}`
followed by the program's code object (marshal), which the client compiled under the policy,
and half-closes; the zygote forks a child that inherits the code and answers with the child's
result JSON.

Why the client compiles: every fork write-protects all of the zygote's memory, so each page
the zygote writes afterwards costs it a page fault; compiling here allocated a few hundred
pages' worth of syntax tree per program (about half of the zygote's faults), in the calling
process it costs nothing extra. The socket lives in a private folder (mode 0700) of the
calling user, who is trusted; the program is not. Children are forked on demand, not ahead: a
child waiting while the zygote works makes every page the zygote touches a copy, which
measured slower (benchmarks/README.md).

The zygote is single-threaded (forking from a threaded process is unsafe) and multiplexes
everything with `selectors`: new connections, request bytes, result pipes of running children,
their exits (pidfds: a child is reaped once it has gone, never waited for; a blocking wait for
its exit held the loop about a millisecond per run), deadlines. It is the parent of every
child, so it can kill a child's whole process group at the deadline and read the exact exit
status. It exits when its stdin (a pipe from the client process) closes, killing any children
first.
"""

from __future__ import annotations

import collections
import gc
import json
import marshal
import os
import selectors
import signal
import socket
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any

from cap_app.sandbox.config import SandboxConfig
from cap_app.sandbox.modules import enable_sympy
from cap_app.sandbox.worker import ProgramRun, address_space, child_main, execute

MAX_RUNNING = max(2, 2 * (os.cpu_count() or 1))  # more requests wait in a queue
KILL_GRACE_S = 0.5  # the child's own alarm fires first; this is the backstop
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # a program of MAX_PROGRAM_CHARS and its code object
MAX_RESULT_BYTES = 64 * 1024 * 1024  # output (<= 16 MiB) + trace (<= 2M chars), JSON-escaped


@dataclass
class Job:
    conn: socket.socket
    config: SandboxConfig
    source: str
    code: types.CodeType
    pid: int = 0
    result_fd: int = -1  # -1 once the pipe is closed
    exit_fd: int = -1  # the child's pidfd: readable once it has exited
    deadline: float = 0.0
    killed: bool = False
    replied: bool = False
    output: bytearray = field(default_factory=bytearray)


def warm_up(with_sympy: bool) -> None:
    """Run the sandbox's own code paths once (unisolated, trusted input) so lazy imports and
    caches are filled before forking: children cannot open files to import anything."""
    sample = (
        "import math, fractions, decimal, statistics, itertools, functools, collections, datetime\n"
        "print(f'{fractions.Fraction(1, 3) + 1:}', '{:.2f}'.format(decimal.Decimal('1.25')))\n"
        "print(statistics.mean([1, 2, 3]), datetime.date(2024, 1, 1) + datetime.timedelta(days=1))\n"
        "print(datetime.datetime.now().year > 2000, collections.Counter('aab').most_common(1))\n"
        "print(datetime.datetime.strptime('2024-01-02', '%Y-%m-%d').day, statistics.median([1, 3]))\n"
    )
    if with_sympy:
        sample += (
            "import sympy\n"
            "x = sympy.symbols('x')\n"
            "roots = sympy.solve(sympy.Eq(2 * x + 3, 7), x)\n"
            "print(roots, sympy.simplify((x**2 - 1) / (x - 1)), sympy.factor(x**2 - 1), sympy.nsimplify(0.5))\n"
            "y = sympy.Symbol('y')\n"
            "print(sympy.linsolve([x + y - 10, x - y - 2], [x, y]), sympy.expand((x + 1) ** 3), sympy.N(sympy.pi, 5))\n"
            "print(sympy.summation(x, (x, 1, 10)), sympy.isprime(97), sympy.factorint(360), sympy.divisors(12))\n"
            "print(sympy.primefactors(84), sympy.binomial(5, 2), sympy.factorial(5), sympy.floor(sympy.Rational(7, 2)))\n"
            "print(sympy.Matrix([[1, 2], [3, 4]]).det(), sympy.sqrt(8), sympy.Abs(-3), sympy.lcm(4, 6), sympy.gcd(4, 6))\n"
            "print(sympy.solve([x + y - 3, x - y - 1], [x, y]), (x ** 2).subs(x, 3), sympy.Float(1.5) * 2)\n"
        )
    result = execute(sample, SandboxConfig(trace=True), with_sympy=with_sympy)
    if result["status"] != "ok":
        raise RuntimeError(f"sandbox warm-up failed: {result['error']}")
    time.localtime()  # loads the time zone while files can still be read


def _response_for_dead_child(job: Job, status: int) -> dict[str, Any]:
    if job.killed or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU):
        return {"status": "timeout", "error": f"time limit of {job.config.timeout_s:g} s exceeded"}
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum == signal.SIGKILL:  # not ours: the kernel's out-of-memory killer
            return {"status": "memory", "error": f"memory limit of {job.config.memory_mb} MB exceeded"}
        if signum == signal.SIGXFSZ:
            return {"status": "error", "error": "writing files is not allowed"}
        return {"status": "error", "error": f"the program crashed ({signal.Signals(signum).name})"}
    return {"status": "error", "error": f"the program ended without a result (exit status {os.WEXITSTATUS(status)})"}


class Zygote:
    def __init__(self, socket_path: str):
        # The children's `/` when run as root: inside the client's private folder, so the client
        # removes it even if this process is killed.
        self.empty_root = os.path.join(os.path.dirname(socket_path), "empty-root")
        os.mkdir(self.empty_root, 0o700)
        self.devnull = os.open(os.devnull, os.O_RDWR)  # each child's stdin/stdout/stderr
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(socket_path)
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "parent")
        self.pending: dict[socket.socket, bytearray] = {}
        self.queue: collections.deque[Job] = collections.deque()
        self.running: dict[int, Job] = {}  # pid -> job, until reaped
        self.alive = True
        self.socket_path = socket_path

    def serve(self) -> None:
        while self.alive:
            for key, _ in self.selector.select(self._wait_time()):
                kind = key.data
                if kind == "accept":
                    self._accept()
                elif kind == "parent":
                    if not os.read(sys.stdin.fileno(), 4096):
                        self.alive = False
                elif kind == "request":
                    self._read_request(key.fileobj)
                elif self.running.get(kind.pid) is not kind:
                    continue  # reaped earlier in this round
                elif key.fd == kind.result_fd:
                    self._read_result(kind)
                elif key.fd == kind.exit_fd:
                    self._reap(kind)
            self._enforce_deadlines()
            self._start_queued()
        self._shutdown()

    def _wait_time(self) -> float | None:
        deadlines = [job.deadline for job in self.running.values() if not job.killed]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.pending[conn] = bytearray()
        self.selector.register(conn, selectors.EVENT_READ, "request")

    def _read_request(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
            self.pending[conn].clear()
        buffer = self.pending[conn]
        buffer += data
        if data and len(buffer) <= MAX_REQUEST_BYTES:
            return
        self.selector.unregister(conn)
        del self.pending[conn]
        try:
            header, _, code_bytes = bytes(buffer).partition(b"\n")
            request = json.loads(header)
            config = SandboxConfig(**request["config"])
            source = request["source"]
            code = marshal.loads(code_bytes)
            if not isinstance(source, str) or not isinstance(code, types.CodeType):
                raise TypeError("expected the source text and its code object")
        except Exception as exc:
            self._reply(conn, {"status": "error", "error": f"bad sandbox request: {exc}"})
            return
        self.queue.append(Job(conn, config, source, code))

    def _start_queued(self) -> None:
        while self.queue and len(self.running) < MAX_RUNNING:
            job = self.queue.popleft()
            try:
                self._fork(job)
            except OSError as exc:  # out of processes or memory
                self._reply(job.conn, {"status": "error", "error": f"could not start a sandbox process: {exc}"})

    def _fork(self, job: Job) -> None:
        """Fork the child that runs `job`; it inherits the compiled program."""
        run = ProgramRun(job.code, job.source, job.config)  # set up here: see ProgramRun
        result_read, result_write = os.pipe()
        size = address_space()
        try:
            pid = os.fork()
        except OSError:
            os.close(result_read)
            os.close(result_write)
            raise
        if pid == 0:  # the child: never returns
            child_main(result_write, self.devnull, self.empty_root, size, run)
        del run
        os.close(result_write)
        os.set_blocking(result_read, False)
        try:
            os.setpgid(pid, pid)  # also done by the child; whichever runs first wins
        except OSError:
            pass
        job.pid, job.result_fd, job.exit_fd = pid, result_read, os.pidfd_open(pid)
        job.deadline = time.monotonic() + job.config.timeout_s + KILL_GRACE_S
        self.running[pid] = job
        self.selector.register(result_read, selectors.EVENT_READ, job)
        self.selector.register(job.exit_fd, selectors.EVENT_READ, job)

    def _read_result(self, job: Job) -> bool:
        """Take what the child wrote (a complete result line is answered at once); False when
        there is nothing more to read now."""
        try:
            data = os.read(job.result_fd, 1 << 16)
        except BlockingIOError:
            return False
        if data and len(job.output) + len(data) <= MAX_RESULT_BYTES:
            job.output += data
            if not job.replied and job.output.endswith(b"\n"):
                self._reply_result(job)
            return True
        if data:  # a result this large is not one the worker writes
            self._kill(job)
        self._close_result(job)
        return False

    def _close_result(self, job: Job) -> None:
        if job.result_fd >= 0:
            self.selector.unregister(job.result_fd)
            os.close(job.result_fd)
            job.result_fd = -1

    def _reply_result(self, job: Job) -> None:
        """Forward a result line as it came: the client parses it and checks its shape (the
        child is untrusted), so parsing it here too would only cost the zygote page faults."""
        if job.output.startswith(b"{") and job.output.endswith(b"}\n"):
            job.replied = True
            self._reply(job.conn, bytes(job.output))
        # anything else is not a result: reported as a dead child when the child has gone

    def _kill(self, job: Job) -> None:
        job.killed = True
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for job in list(self.running.values()):
            if not job.killed and now >= job.deadline:
                self._kill(job)  # its exit is reaped like any other

    def _reap(self, job: Job) -> None:
        """The child has exited: read what is left of its result, collect its status, answer."""
        while job.result_fd >= 0 and not job.killed and self._read_result(job):
            pass
        self._close_result(job)
        self.selector.unregister(job.exit_fd)
        os.close(job.exit_fd)
        del self.running[job.pid]
        if not job.replied:
            try:  # whatever is left of the child's group; the unreaped child keeps the id reserved
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _, status = os.waitpid(job.pid, 0)  # already exited: does not block
        if not job.replied:
            self._reply(job.conn, _response_for_dead_child(job, status))

    def _reply(self, conn: socket.socket, result: dict[str, Any] | bytes) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(10)
            conn.sendall(result if isinstance(result, bytes) else json.dumps(result).encode("utf-8"))
        except OSError:
            pass  # the client gave up; nothing to do
        finally:
            conn.close()

    def _shutdown(self) -> None:
        for job in list(self.running.values()):
            self._kill(job)
            os.waitpid(job.pid, 0)
        self.listener.close()
        os.close(self.devnull)
        os.rmdir(self.empty_root)
        os.unlink(self.socket_path)
        try:  # the client's private folder for this socket, if the client died before removing it
            os.rmdir(os.path.dirname(self.socket_path))
        except OSError:
            pass


def main(argv: list[str]) -> int:
    """`zygote.py SOCKET_PATH [--sympy]`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client process decides when we stop
    with_sympy = "--sympy" in argv[1:]
    if with_sympy:
        enable_sympy()
    zygote = Zygote(argv[0])
    warm_up(with_sympy)
    gc.collect()
    gc.freeze()  # children then leave the pre-imported heap untouched by the collector
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    zygote.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
