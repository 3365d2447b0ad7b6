"""The fork server ("zygote"): a clean interpreter with the sandbox pre-imported that forks one
child per program, so a run costs a fork instead of Python's start-up.

`runner.py` starts it as `python -m cap_app.sandbox.zygote SOCKET_PATH [--sympy]` (two
zygotes: sympy makes every fork about ten times slower, so only programs that name it go to the
zygote that imported it). It prints `ready` and the names of its children's walls (`walls.py`,
e.g. `ready rlimits netns landlock seccomp`) once imports and warm-up are done, then serves one
run per connection on a Unix socket. The protocol (`protocol.py`): the client sends the run's
time limit (8 bytes), then the request, and half-closes; the zygote reads only the time limit
and forks; the child reads the request from the same connection, runs it and writes its result
there; once the child has exited and been reaped, the zygote appends its own last line with the
child's wait status, so the client learns of kills and crashes from the parent, never from the
child.

Why the zygote does so little: every fork write-protects all of its memory, so each page it
writes afterwards costs it a page fault, and every Python object it touches is written
(reference counts). Parsing requests, setting runs up and relaying results here cost it about
130 more faults per run than it takes now; the child does the same work for about 90, and the
zygote, which every run queues behind, is free sooner (benchmarks/README.md). The socket lives
in a private folder (mode 0700) of the calling user, who is trusted; the program is not.
Children are forked on demand, not ahead: a child waiting while the zygote works makes every
page the zygote touches a copy.

A zygote is single-threaded (forking from a threaded process is unsafe) and multiplexes
everything with one epoll: new connections, their time limits, the exits of running children
(pidfds: a child is reaped once it has gone, never waited for), deadlines. It is the parent of
every child, so it can kill a child's whole process group at the deadline and read the exact
exit status. On a machine with several CPUs it forks copies of itself that serve the same
socket (`start_siblings`). It exits when its stdin (a pipe from the client process) closes,
killing any children first.
"""

from __future__ import annotations

import collections
import gc
import os
import select
import signal
import socket
import sys
import time
import types

# Started with `-S` (see runner.py): the third-party libraries' folders go after the standard
# library's, as `site` would put them.
sys.path.extend(filter(None, os.environ.get("CAP_SANDBOX_LIBRARIES", "").split(os.pathsep)))
# `statistics` imports `random` only for NormalDist.samples, which no facade exposes; a real
# `random` registers an at-fork reseed that costs every child ~40 page faults (0.1 ms), so a
# placeholder stands in while the sandbox's modules load (the sympy zygote imports the real one).
_RANDOM_PLACEHOLDER = types.ModuleType("random", "placeholder, see cap_app/sandbox/zygote.py")
sys.modules.setdefault("random", _RANDOM_PLACEHOLDER)
from cap_app.sandbox import protocol  # noqa: E402
from cap_app.sandbox.config import SandboxConfig  # noqa: E402
from cap_app.sandbox.modules import enable_sympy  # noqa: E402
from cap_app.sandbox.sympy_reader import close_sympy_parser  # noqa: E402
from cap_app.sandbox.worker import child_main, execute, set_up_zygote  # noqa: E402

if sys.modules.get("random") is _RANDOM_PLACEHOLDER:
    del sys.modules["random"]

CPUS = len(os.sched_getaffinity(0))  # the CPUs this process may use (a container's share)
FORKERS = min(4, CPUS)  # processes serving the socket, see `start_siblings`
MAX_RUNNING = max(2, 2 * CPUS // FORKERS)  # per forker; more runs wait in a queue
KILL_GRACE_S = 0.5  # the child's own alarm fires first; this is the backstop


class Run:
    """One connection (a descriptor): waiting for its time limit, queued, or running as child `pid`."""

    __slots__ = ("conn", "limit", "pid", "pidfd", "deadline", "killed")

    def __init__(self, conn: int):
        self.conn, self.limit = conn, b""
        self.pid = self.pidfd = 0
        self.deadline, self.killed = 0.0, False


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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
            "print(sympy.primefactors(84), sympy.binomial(5, 2), sympy.factorial(5), "
            "sympy.floor(sympy.Rational(7, 2)))\n"
            "print(sympy.Matrix([[1, 2], [3, 4]]).det(), sympy.sqrt(8), sympy.Abs(-3), "
            "sympy.lcm(4, 6), sympy.gcd(4, 6))\n"
            "print(sympy.solve([x + y - 3, x - y - 1], [x, y]), (x ** 2).subs(x, 3), sympy.Float(1.5) * 2)\n"
        )
    result = execute(sample, SandboxConfig(trace=True), with_sympy=with_sympy)
    if result["status"] != "ok":
        raise RuntimeError(f"sandbox warm-up failed: {result['error']}")
    protocol.read_request(protocol.request_body("print(1)", compile("print(1)", "<warm-up>", "exec"), SandboxConfig()))
    time.localtime()  # loads the time zone while files can still be read


class Zygote:
    def __init__(self, socket_path: str):
        # The children's `/` when run as root: inside the client's private folder, so the client
        # removes it even if this process is killed.
        self.empty_root = os.path.join(os.path.dirname(socket_path), "empty-root")
        os.mkdir(self.empty_root, 0o700)
        self.devnull = os.open(os.devnull, os.O_RDWR)  # each child's stdin/stdout/stderr
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(socket_path)
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.parent = sys.stdin.fileno()
        self.siblings: list[int] = []  # the copies this zygote forked (start_siblings)
        self.is_sibling = False  # a copy: the first zygote cleans up after all of them
        self.first = -1  # in a copy: a pidfd of the first zygote
        self.waiting: dict[int, Run] = {}  # connection fd -> run whose time limit is still to come
        self.queue: collections.deque[Run] = collections.deque()
        self.running: dict[int, Run] = {}  # pidfd -> run, until reaped
        self.alive = True
        self.socket_path = socket_path

    def start_siblings(self, count: int) -> None:
        """Fork `count` copies of this zygote that serve the same socket (in each, this returns
        at once). A fork takes the forking process about a third of a millisecond, so with one
        forker, runs queue behind it and CPUs idle; each copy forks and reaps its own children.
        The copies share the zygote's pages, so each costs little memory."""
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                self.siblings, self.is_sibling = [], True
                self.first = os.pidfd_open(os.getppid())  # a copy stops when the first zygote does
                return
            self.siblings.append(pid)

    def serve(self) -> None:
        """The loop. Connections are plain descriptors and the helpers few: every Python function
        and object this touches costs a page fault after each fork (socket objects alone, with
        their enum conversions, cost about twenty)."""
        listener, parent = self.listener.fileno(), self.parent
        self.epoll = select.epoll()  # each forker's own: an inherited one would share its events
        self.epoll.register(listener, select.EPOLLIN | select.EPOLLEXCLUSIVE)  # one forker woken per connection
        self.epoll.register(parent, select.EPOLLIN)
        if self.is_sibling:
            self.epoll.register(self.first, select.EPOLLIN)
        running, waiting = self.running, self.waiting
        while self.alive:
            timeout = -1.0
            if running:
                deadlines = [run.deadline for run in running.values() if not run.killed]
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else -1.0
            for fd, _ in self.epoll.poll(timeout):
                if fd == listener:
                    try:
                        conn, _ = self.listener._accept()  # a descriptor, not a socket object
                    except BlockingIOError:
                        continue
                    os.set_blocking(conn, False)
                    self._read_limit(Run(conn))
                elif fd in running:
                    self._reap(running.pop(fd))
                elif fd in waiting:
                    self._read_limit(waiting[fd])
                elif fd == parent and not os.read(parent, 4096) or fd == self.first:
                    self.alive = False
            if running:
                now = time.monotonic()
                for run in running.values():
                    if not run.killed and now >= run.deadline:
                        run.killed = True
                        _kill_group(run.pid)  # its exit is reaped like any other
            while self.queue and len(running) < MAX_RUNNING:
                self._fork(self.queue.popleft())
        self._shutdown()

    def _read_limit(self, run: Run) -> None:
        """The run's time limit, the first 8 bytes; the rest of the request is the child's."""
        try:
            data = os.read(run.conn, protocol.LIMIT_BYTES - len(run.limit))
        except BlockingIOError:  # not sent yet: wait for it
            if run.conn not in self.waiting:
                self.waiting[run.conn] = run
                self.epoll.register(run.conn, select.EPOLLIN)
            return
        except OSError:
            data = b""
        run.limit += data
        if data and len(run.limit) < protocol.LIMIT_BYTES:
            return self._read_limit(run)
        if self.waiting.pop(run.conn, None) is not None:
            self.epoll.unregister(run.conn)
        timeout_s = protocol.read_limit(run.limit)
        if timeout_s is None:
            self._refuse(run, "bad sandbox request: no valid time limit")
        else:
            run.deadline = timeout_s + KILL_GRACE_S  # relative until the child starts
            self.queue.append(run)

    def _fork(self, run: Run) -> None:
        try:
            pid = os.fork()
        except OSError as exc:  # out of processes or memory
            return self._refuse(run, f"could not start a sandbox process: {exc}")
        if pid == 0:  # the child: never returns
            child_main(run.conn, self.devnull, self.empty_root, self.inherited)
        try:
            os.setpgid(pid, pid)  # also done by the child; whichever runs first wins
        except OSError:
            pass
        run.pid, run.pidfd = pid, os.pidfd_open(pid)
        run.deadline += time.monotonic()
        self.running[run.pidfd] = run
        self.epoll.register(run.pidfd, select.EPOLLIN)

    def _reap(self, run: Run) -> None:
        """The child has exited: collect its status and tell the client."""
        self.epoll.unregister(run.pidfd)
        os.close(run.pidfd)
        _kill_group(run.pid)  # whatever is left of its group; the unreaped child keeps the id reserved
        _, status = os.waitpid(run.pid, 0)  # already exited: does not block
        self._finish(run, protocol.exit_line(status, run.killed))

    def _refuse(self, run: Run, message: str) -> None:
        """Answer a run no child will read: what the client sent is read first, because closing
        a Unix socket with unread data resets it and the client would lose the answer."""
        try:
            while os.read(run.conn, 1 << 16):
                pass
        except OSError:  # nothing more for now (a request of over ~200 KB may still lose it)
            pass
        self._finish(run, protocol.zygote_error(message))

    @staticmethod
    def _finish(run: Run, line: bytes) -> None:
        """The zygote's line ends the reply. It comes after anything of the child's still in the
        socket's buffer, so when the buffer is full it is sent with a timeout; a client that gave
        up or stopped reading loses it."""
        try:
            sent = os.write(run.conn, line)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = len(line)  # the client has gone
        if sent == len(line):
            os.close(run.conn)
            return
        with socket.socket(fileno=run.conn) as conn:  # closes the descriptor
            conn.settimeout(10)
            try:
                conn.sendall(line[sent:])
            except OSError:
                pass

    def _shutdown(self) -> None:
        for run in self.running.values():
            _kill_group(run.pid)
            os.waitpid(run.pid, 0)
        self.listener.close()
        os.close(self.devnull)
        if self.is_sibling:
            return
        for pid in self.siblings:  # they stop on the same end of file
            os.waitpid(pid, 0)
        try:  # the client's private folder, if the client died before removing it; not under Landlock
            os.rmdir(self.empty_root)
            os.unlink(self.socket_path)
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
    if with_sympy:  # after the warm-up: modules sympy imports lazily parse names as they load
        close_sympy_parser()
    zygote.inherited = set_up_zygote()
    gc.collect()
    gc.freeze()  # children then leave the pre-imported heap untouched by the collector
    zygote.start_siblings(FORKERS - 1)
    if not zygote.is_sibling:
        sys.stdout.write(" ".join(("ready",) + zygote.inherited.walls) + "\n")
        sys.stdout.flush()
    zygote.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
