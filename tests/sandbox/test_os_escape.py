"""Files, sockets, processes, code execution and I/O builtins. Two walls are tested: the
policy (programs cannot name these things), and the process itself (`seal` + `limit`, with the
kernel walls of `walls.py`): code that got past the policy still cannot open, change or list
any path, connect, fork, start a program or signal any process, as root (CI) and as the
ordinary user production runs as (uid 1000)."""

from __future__ import annotations

import ctypes
import mmap
import os
import resource
import signal
import socket
import subprocess
import time

import pytest

from cap_app.sandbox import SandboxConfig, walls, worker
from tests.sandbox.conftest import CANARY_TEXT, RESULT_FD, in_child
from tests.sandbox.hostile import cases, stopped_test

OPEN_CANARY_FOR_WRITING = "f = open('CANARY', 'w')\nf.write('pwned')"
OPEN_PASSWD = "print(open('/etc/passwd').read())"
EXEC_CALL = "exec('import os')"
EVAL_CALL = "eval('1 + 1')"
COMPILE_BUILTIN = "c = compile('1', 'x', 'eval')"
INPUT_BUILTIN = "x = input()"
EXIT_BUILTIN = "exit(1)"
QUIT_BUILTIN = "quit()"
HELP_BUILTIN = "help(print)"
BREAKPOINT_BUILTIN = "breakpoint()"
PRINT_TO_FILE = "print('x', file=[])"
PRINT_REBIND = "print = 1"
OS_SYSTEM = "import os\nos.system('touch CANARY')"
SUBPROCESS_RUN = "import subprocess\nsubprocess.run(['rm', 'CANARY'])"
CTYPES_LIBC = "import ctypes\nctypes.CDLL(None).system(b'true')"
SOCKET_CONNECT = "import socket\nsocket.create_connection(('127.0.0.1', 80))"
WITH_OPEN = "with open('CANARY', 'a') as f:\n    f.write('x')"
MEMORYVIEW_BUILTIN = "m = memoryview(b'abc')"
BYTEARRAY_BUILTIN = "b = bytearray(10)"
PRINTED_SHADOW = "printed = 1"

CASES = cases(
    (OPEN_CANARY_FOR_WRITING, "error", "line 1: name 'open' is not defined"),
    (OPEN_PASSWD, "error", "line 1: name 'open' is not defined"),
    (EXEC_CALL, "rejected", "line 1: Exec calls are not allowed"),
    (EVAL_CALL, "rejected", "line 1: Eval calls are not allowed"),
    (COMPILE_BUILTIN, "error", "line 1: name 'compile' is not defined"),
    (INPUT_BUILTIN, "error", "line 1: name 'input' is not defined"),
    (EXIT_BUILTIN, "error", "line 1: name 'exit' is not defined"),
    (QUIT_BUILTIN, "error", "line 1: name 'quit' is not defined"),
    (HELP_BUILTIN, "error", "line 1: name 'help' is not defined"),
    (BREAKPOINT_BUILTIN, "rejected", 'line 1: "breakpoint" is a reserved name'),
    (PRINT_TO_FILE, "error", "line 1: print(file=...) is not allowed"),
    (PRINT_REBIND, "rejected", 'line 1: "print" is a reserved name'),
    (OS_SYSTEM, "rejected", "line 1: import of 'os' is not allowed"),
    (SUBPROCESS_RUN, "rejected", "line 1: import of 'subprocess' is not allowed"),
    (CTYPES_LIBC, "rejected", "line 1: import of 'ctypes' is not allowed"),
    (SOCKET_CONNECT, "rejected", "line 1: import of 'socket' is not allowed"),
    (WITH_OPEN, "error", "line 1: name 'open' is not defined"),
    (MEMORYVIEW_BUILTIN, "error", "line 1: name 'memoryview' is not defined"),
    (BYTEARRAY_BUILTIN, "error", "line 1: name 'bytearray' is not defined"),
    (PRINTED_SHADOW, "rejected", 'line 1: "printed" is a reserved name'),
)


test_os_access_is_stopped = stopped_test(CASES)


# ---- the second wall: unrestricted code inside a sealed, limited child, as root and as a user

EPERM = "PermissionError: [Errno 1] Operation not permitted"
libc = ctypes.CDLL(None, use_errno=True)
sealed_with: tuple[str, ...] = ()  # in a sealed child: the walls it was sealed with


def in_sealed_child(action, tmp_path, uid: int | None = None, before_seal=None) -> str:
    """Run `action` (plain Python, as if it had escaped the policy) in a child set up, sealed
    and limited exactly like a sandbox worker of a zygote running as `uid` (default: as this
    process); return 'ok: ...' or the exception it raised. `before_seal` runs in the child first."""
    empty_root = tmp_path / "empty-root"
    empty_root.mkdir(mode=0o700, exist_ok=True)

    def sealed_action():
        global sealed_with
        if before_seal is not None:
            before_seal()
        devnull = os.open(os.devnull, os.O_RDWR)  # opened before Landlock, as the zygote's is
        inherited = worker.set_up_zygote()  # what a zygote sets once for all its children
        sealed_with = inherited.walls
        worker.seal(RESULT_FD, devnull, str(empty_root), inherited)
        worker.limit(SandboxConfig(timeout_s=2), inherited.address_space)
        return action()

    return in_child(sealed_action, uid)


@pytest.fixture
def neighbour(user):
    """Another process of the sealed child's user (the app server, say): it must survive."""
    process = subprocess.Popen(["sleep", "60"], user=user, group=user, extra_groups=[] if user else None)
    yield process.pid
    assert process.poll() is None, "the sealed child signalled another process"
    process.kill()
    process.wait()


def test_the_kernel_walls_are_found_for_both_users(tmp_path, user):
    found = in_sealed_child(lambda: sealed_with, tmp_path, user)
    assert "'seccomp'" in found
    assert ("'landlock'" in found) == (walls.landlock_abi() > 0)
    assert ("'chroot-nobody'" in found) == (user is None and os.getuid() == 0)


# Each changes the canary (a world-writable file in a world-writable folder) or its folder.
FILE_CHANGES = {
    "open_for_appending": lambda canary: open(canary, "a").write("pwned"),
    "unlink": os.unlink,
    "rename": lambda canary: os.rename(canary, canary.with_name("moved")),
    "truncate": lambda canary: os.truncate(canary, 0),
    "chmod": lambda canary: os.chmod(canary, 0o600),
    "chown": lambda canary: os.chown(canary, os.getuid(), os.getgid()),
    "link": lambda canary: os.link(canary, canary.with_name("hard-link")),
    "symlink": lambda canary: os.symlink(canary, canary.with_name("symlink")),
    "mkdir": lambda canary: os.mkdir(canary.with_name("new")),
    "rmdir": lambda canary: os.rmdir(canary.parent),
    "utime": lambda canary: os.utime(canary, (0, 0)),
}


@pytest.mark.parametrize("name", FILE_CHANGES)
def test_escaped_code_changes_no_file(tmp_path, canary, user, name):
    listing = sorted(os.listdir(canary.parent))
    stat = os.stat(canary)
    assert in_sealed_child(lambda: FILE_CHANGES[name](canary), tmp_path, user).startswith(EPERM)
    assert canary.read_text() == CANARY_TEXT and sorted(os.listdir(canary.parent)) == listing
    assert (os.stat(canary).st_mode, os.stat(canary).st_mtime_ns) == (stat.st_mode, stat.st_mtime_ns)


PATH_READS = {
    "read_a_file": lambda canary: open(canary).read(),
    "read_etc_passwd": lambda canary: open("/etc/passwd").read(),
    "list_a_folder": lambda canary: os.listdir(canary.parent),
    "stat": lambda canary: os.stat("/etc/passwd"),
    "proc_self_mem": lambda canary: open("/proc/self/mem", "r+b"),
    "execv": lambda canary: os.execv("/bin/true", ["true"]),  # would end the child without an outcome
}


@pytest.mark.parametrize("name", PATH_READS)
def test_escaped_code_reaches_no_path(tmp_path, canary, user, name):
    assert in_sealed_child(lambda: PATH_READS[name](canary), tmp_path, user).startswith(EPERM)


PROCESS_ACTIONS = {
    "kill_a_process_of_the_same_user": lambda pid: os.kill(pid, signal.SIGKILL),
    "signal_the_parent": lambda pid: os.kill(os.getppid(), 0),  # 0: checks permission only
    "signal_init": lambda pid: os.kill(1, 0),
    "setsid": lambda pid: os.setsid(),  # (a process group leader could not anyway)
    "nice": lambda pid: os.nice(1),
    "prlimit_of_another_process": lambda pid: resource.prlimit(pid, resource.RLIMIT_CPU, (1, 1)),
    "fork": lambda pid: os.fork(),
    "pipe": lambda pid: os.pipe(),
    "socket": lambda pid: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
    "unix_socket_pair": lambda pid: socket.socketpair(),
    "mmap_of_a_descriptor": lambda pid: mmap.mmap(worker.RESULT_FD, 4096),
}


@pytest.mark.parametrize("name", PROCESS_ACTIONS)
def test_escaped_code_signals_starts_and_connects_nothing(tmp_path, neighbour, user, name):
    assert in_sealed_child(lambda: PROCESS_ACTIONS[name](neighbour), tmp_path, user).startswith(EPERM)


def test_escaped_code_cannot_write_through_inherited_descriptors(tmp_path, canary, user):
    """Whatever the zygote had open (here the canary, opened for appending, and stdout and stderr
    on a pipe this test reads) is closed or on /dev/null: writing to every descriptor number
    reaches nothing. The canary is opened by this process, so the child needs no path to it."""
    leaked = os.open(canary, os.O_WRONLY | os.O_APPEND)
    read_end, write_end = os.pipe()

    def stdout_on_the_pipe():
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)

    def write_everywhere():
        written = []
        for fd in range(256):
            try:
                if fd != RESULT_FD and os.write(fd, b"pwned"):
                    written.append(fd)
            except OSError:
                pass
        return written

    try:
        outcome = in_sealed_child(write_everywhere, tmp_path, user, before_seal=stdout_on_the_pipe)
    finally:
        os.close(leaked)
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        came_through = pipe.read()
    assert outcome == "ok: [0, 1, 2]"  # only /dev/null took the writes, as a zygote's children have it
    assert came_through == b"" and canary.read_text() == CANARY_TEXT


def test_escaped_code_cannot_raise_its_limits(tmp_path, user):
    raise_hard_limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))  # noqa: E731
    assert in_sealed_child(raise_hard_limit, tmp_path, user) == "ValueError: not allowed to raise maximum limit"


# Raw system calls no Python function makes, by number: name -> (x86_64, aarch64). Checked
# against libseccomp's table in test_walls.py.
RAW_SYSCALLS = {
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "personality": (135, 92),
    "mount": (165, 40),
    "bpf": (321, 280),
    "io_uring_setup": (425, 425),
    "userfaultfd": (323, 282),
    "keyctl": (250, 219),
    "connect": (42, 203),
    "tgkill": (234, 131),
    "pidfd_open": (434, 434),
    "unshare": (272, 97),
    "execveat": (322, 281),
    "memfd_create": (319, 279),
    "openat2": (437, 437),
    "open_by_handle_at": (304, 265),
    "ioctl": (16, 29),
    "fcntl": (72, 25),
    "seccomp": (317, 277),
    "prctl": (157, 167),
    "mmap": (9, 222),  # mmap: flags 0 is not anonymous
}


COLUMN = walls.ARCHES[os.uname().machine][0]  # (uname is one of the calls a sealed child cannot make)


def raw_syscall(name: str) -> str:
    """Make system call `name` with zero arguments; 'ok' or the error's name."""
    number = RAW_SYSCALLS[name][COLUMN]
    if libc.syscall(number, 0, 0, 0, 0, 0, 0) == -1:
        return os.strerror(ctypes.get_errno())
    return "ok"


@pytest.mark.parametrize("name", RAW_SYSCALLS)
def test_escaped_code_gets_eperm_from_every_other_call(tmp_path, user, name):
    """With zero arguments most would fail anyway, but with EFAULT, EINVAL or EBADF."""
    assert in_sealed_child(lambda: raw_syscall(name), tmp_path, user) == "ok: Operation not permitted"


def test_anonymous_memory_time_and_output_still_work(tmp_path, user):
    def compute():
        with mmap.mmap(-1, 1 << 20) as memory:
            memory[:5] = b"12345"
            data = bytes(memory[:5])
        os.write(1, b"to /dev/null")
        resource.setrlimit(resource.RLIMIT_AS, resource.getrlimit(resource.RLIMIT_AS)[1:] * 2)  # the reserve
        return data.decode(), time.time() > 0, sum(x * x for x in range(10**5))

    assert in_sealed_child(compute, tmp_path, user) == "ok: ('12345', True, 333328333350000)"
