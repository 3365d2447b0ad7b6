"""The process wall's kernel layers: limits that need no privilege, so they hold where the app runs
as an ordinary user (the Dockerfile and every Hugging Face Space run as uid 1000), not only as root.

A zygote installs once what this kernel and container allow (`set_up`); each child of it adds
the seccomp filter in `worker.seal`, before it reads the program:
- **seccomp**: `PR_SET_NO_NEW_PRIVS` (set once in the zygote, inherited) and a seccomp-bpf
  allowlist (`SYSCALLS`): what a running CPython computation needs (memory, clocks, the alarm,
  reading and writing descriptors already open, exit) and nothing else: no open/openat, no
  file-system change by path, no execve, no signal to any process, no socket, no ptrace, ...
  Architecture-checked: x86_64 and aarch64; any other ABI (i386 via int 0x80, arm32, x32's
  numbers) is not in the table.
- **Landlock** (kernel 5.13+), on the zygote itself and so on every child: no file-system
  access at all, no TCP bind/connect (ABI 4), no signal or abstract socket outside the zygote
  and its children (ABI 6). It does not depend on seccomp's table being complete.
- **netns**: the zygote enters a new network namespace (with a user namespace when not root),
  so its children see no network interface. Path-bound Unix sockets, like the zygote's own,
  still work.

Denied calls fail with EPERM rather than killing the child. The allowlist is fixed and public,
so an attacker learns nothing from the error; a program (or a lazily imported library path)
that makes an unexpected call gets a readable error in its result instead of a silent SIGSYS
death, and tests can assert each refusal. The one kill: a system call from another ABI, whose
numbers mean other calls.

ctypes and a hand-assembled filter, not libseccomp: no dependency (libseccomp.so.2 is in
Debian images only because apt needs it; pyseccomp wraps it), the filter is built once in the
zygote and loaded with one prctl per child (libseccomp compiles its rules at every load), and
the whole table is here to review. `tests/sandbox/test_walls.py` checks the numbers
against libseccomp's own table where it is installed.
"""

from __future__ import annotations

import ctypes
import os
import struct

# System call numbers: name -> (x86_64, aarch64). aarch64 uses the generic table.
SYSCALLS = {
    "read": (0, 63),
    "write": (1, 64),
    "readv": (19, 65),
    "writev": (20, 66),
    "close": (3, 57),
    "fstat": (5, 80),
    "brk": (12, 214),
    "mmap": (9, 222),
    "munmap": (11, 215),
    "mremap": (25, 216),
    "mprotect": (10, 226),
    "madvise": (28, 233),
    "rt_sigaction": (13, 134),
    "rt_sigprocmask": (14, 135),
    "rt_sigreturn": (15, 139),
    "sigaltstack": (131, 132),
    "getitimer": (36, 102),
    "setitimer": (38, 103),
    "clock_gettime": (228, 113),
    "clock_getres": (229, 114),
    "gettimeofday": (96, 169),
    "nanosleep": (35, 101),
    "clock_nanosleep": (230, 115),
    "futex": (202, 98),
    "sched_yield": (24, 124),
    "getrandom": (318, 278),
    "getpid": (39, 172),
    "gettid": (186, 178),
    "getppid": (110, 173),
    "getuid": (102, 174),
    "geteuid": (107, 175),
    "getgid": (104, 176),
    "getegid": (108, 177),
    "getrusage": (98, 165),
    "prlimit64": (302, 261),
    "restart_syscall": (219, 128),
    "exit": (60, 93),
    "exit_group": (231, 94),
}
ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # machine -> (column, AUDIT_ARCH_*)
# All are allowed whatever their arguments (none reaches a path or another process) but two,
# allowed with one argument checked: mmap only anonymous (no file mapping, even of an open
# descriptor); prlimit64 only on this process (pid 0; the kernel refuses raising a hard limit
# without privilege, and the child needs to raise its soft memory limit after a MemoryError).
MAP_ANONYMOUS = 0x20

_BPF_LD_W_ABS, _BPF_JEQ, _BPF_JGE, _BPF_JSET, _BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_EPERM = 1
_NR, _ARCH = 0, 4  # offsets in struct seccomp_data; args[i] at 16 + 8 * i, low word first


def _arg_low(index: int) -> int:
    return 16 + 8 * index


def assemble(program: list) -> bytes:
    """A classic BPF program from instructions `(code, k, jump_if_true, jump_if_false)` and
    label strings; jumps name a label further on (None: the next instruction)."""
    labels, position = {}, 0
    for item in program:
        if isinstance(item, str):
            labels[item] = position
        else:
            position += 1
    code, position = [], 0
    for item in program:
        if isinstance(item, str):
            continue
        op, k, jt, jf = item
        jt, jf = (0 if label is None else labels[label] - position - 1 for label in (jt, jf))
        code.append(struct.pack("=HBBI", op, jt, jf, k))
        position += 1
    return b"".join(code)


def _search(numbers: list[int], targets: dict[int, str]) -> list:
    """A binary search over sorted `numbers` jumping to each one's label, else to "deny": a few
    comparisons per call instead of one per allowed number. The kernel runs the filter for every
    system call number when it loads it (to cache which are always allowed), so this also makes
    loading it, once per child, about three times faster."""
    if len(numbers) <= 3:
        return [(_BPF_JEQ, n, targets[n], None if n != numbers[-1] else "deny") for n in numbers]
    middle = numbers[len(numbers) // 2]
    upper = f"nr >= {middle}"
    return [
        (_BPF_JGE, middle, upper, None),
        *_search([n for n in numbers if n < middle], targets),
        upper,
        *_search([n for n in numbers if n >= middle], targets),
    ]


def seccomp_filter(machine: str) -> bytes | None:
    """The allowlist for this machine's architecture; None for an architecture not in the table."""
    if machine not in ARCHES:
        return None
    column, audit_arch = ARCHES[machine]
    number = {name: numbers[column] for name, numbers in SYSCALLS.items()}
    deny, allow = (_BPF_RET, _RET_ERRNO | _EPERM, None, None), (_BPF_RET, _RET_ALLOW, None, None)
    return assemble(
        [
            (_BPF_LD_W_ABS, _ARCH, None, None),
            (_BPF_JEQ, audit_arch, "native", None),
            (_BPF_RET, _RET_KILL_PROCESS, None, None),  # another ABI: its numbers mean other calls
            "native",
            (_BPF_LD_W_ABS, _NR, None, None),
            *_search(
                sorted(number.values()),
                {number[name]: name if name in ("mmap", "prlimit64") else "allow" for name in SYSCALLS},
            ),
            "deny",
            deny,
            "allow",
            allow,
            "mmap",
            (_BPF_LD_W_ABS, _arg_low(3), None, None),  # flags
            (_BPF_JSET, MAP_ANONYMOUS, "mmap: allow", None),
            deny,
            "mmap: allow",
            allow,
            "prlimit64",
            (_BPF_LD_W_ABS, _arg_low(0), None, None),  # pid, both words 0
            (_BPF_JEQ, 0, None, "prlimit64: deny"),
            (_BPF_LD_W_ABS, _arg_low(0) + 4, None, None),
            (_BPF_JEQ, 0, "prlimit64: allow", None),
            "prlimit64: deny",
            deny,
            "prlimit64: allow",
            allow,
        ]
    )


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # arguments passed as c_ulong: prctl reads five unsigned longs
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_LANDLOCK_CREATE_RULESET, _LANDLOCK_RESTRICT_SELF = 444, 446  # the same on every architecture
_LANDLOCK_CREATE_RULESET_VERSION = 1
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000

# The child's one call is built here, before the zygote forks: every Python object a child
# touches after the fork costs it a page fault (see zygote.py).
_FILTER = seccomp_filter(os.uname().machine)
_FPROG = _SockFprog(len(_FILTER) // 8, _FILTER) if _FILTER else None
_SECCOMP_CALL = _FPROG and (
    ctypes.c_int(_PR_SET_SECCOMP),
    ctypes.c_ulong(_SECCOMP_MODE_FILTER),
    ctypes.c_ulong(ctypes.addressof(_FPROG)),
    ctypes.c_ulong(0),
    ctypes.c_ulong(0),
)


def _check(result: int, what: str) -> None:
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def forbid_new_privileges() -> bool:
    """No exec may grant privileges to this process or its children again; without privilege,
    seccomp and Landlock are allowed only after this."""
    return _prctl(ctypes.c_int(_PR_SET_NO_NEW_PRIVS), *map(ctypes.c_ulong, (1, 0, 0, 0))) == 0


def install_seccomp() -> None:
    """Load the allowlist into this process (after `forbid_new_privileges`)."""
    if not _SECCOMP_CALL:
        raise OSError(f"no seccomp table for {os.uname().machine}")
    _check(_prctl(*_SECCOMP_CALL), "seccomp")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none (or a container forbids it)."""
    return max(
        0,
        _syscall(
            ctypes.c_long(_LANDLOCK_CREATE_RULESET),
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
        ),
    )


def landlock_ruleset(abi: int) -> bytes:
    """A ruleset attribute handling every right this ABI knows, with no rule granting any: no
    file-system access (ABI 1-3, 5), no TCP (4), no signal or abstract socket outside (6)."""
    file_rights = (1 << {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)) - 1
    fields = [file_rights] + ([3] if abi >= 4 else []) + ([3] if abi >= 6 else [])
    return struct.pack(f"={len(fields)}Q", *fields)


def install_landlock() -> None:
    """Restrict this process and all it forks, for good, with an empty Landlock ruleset (after
    `forbid_new_privileges`)."""
    abi = landlock_abi()
    if abi == 0:
        raise OSError("this kernel has no Landlock")
    attr = landlock_ruleset(abi)
    fd = _syscall(ctypes.c_long(_LANDLOCK_CREATE_RULESET), attr, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    _check(fd, "landlock")
    try:
        _check(_syscall(ctypes.c_long(_LANDLOCK_RESTRICT_SELF), ctypes.c_long(fd), ctypes.c_long(0)), "landlock")
    finally:
        os.close(fd)


def enter_network_namespace() -> bool:
    """Move this process into a new network namespace with no interface; False if not allowed.
    Root needs only that; a user enters a user namespace with it, maps its own ids, and drops
    the capabilities the new namespace gave it (children must not hold any)."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        return _libc.unshare(_CLONE_NEWNET) == 0
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        return False
    try:  # so os.getuid() still says who this is; unmapped, it would say 65534
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
    except OSError:
        pass
    header = struct.pack("=Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    _check(_libc.capset(header, bytes(24)), "capset")  # effective, permitted, inheritable: none
    return True


def _try(install_layer) -> bool:
    try:
        install_layer()
    except OSError:
        return False
    return True


def seccomp_works() -> bool:
    """Whether this process's children can load the allowlist, tried once in a throwaway child
    (loading it is for good)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0 if _try(install_seccomp) else 1)
    return os.waitpid(pid, 0)[1] == 0


def set_up() -> tuple[str, ...]:
    """Once, in a zygote before it forks, after everything that reads files: no new privileges,
    the network namespace, Landlock on the zygote itself (inherited by every child at no cost
    per run: the zygote needs no file after this, and the client removes its folder), and
    whether children can load the seccomp allowlist. The names of its children's walls."""
    walls = ["rlimits"] + (["chroot-nobody"] if os.getuid() == 0 else [])
    if not forbid_new_privileges():
        return tuple(walls)
    walls += ["netns"] if enter_network_namespace() else []
    walls += ["landlock"] if _try(install_landlock) else []
    return tuple(walls) + (("seccomp",) if seccomp_works() else ())


WALL_TEXT = {
    "rlimits": "rlimits (no new descriptor, process or file write)",
    "chroot-nobody": "empty root folder and user nobody",
    "seccomp": "seccomp-bpf allowlist",
    "landlock": "Landlock (no file access)",
    "netns": "network namespace",
}
SECOND_WALLS = ("chroot-nobody", "seccomp", "landlock")  # what stops escaped code reaching files and processes


def describe(walls: tuple[str, ...]) -> str:
    """One line for logs and the page: the walls active, or a warning when only rlimits are."""
    if not walls:
        return "sandbox walls: unknown (the sandbox server did not start, or did not say)"
    text = "sandbox walls: RestrictedPython policy; " + ", ".join(WALL_TEXT.get(w, w) for w in walls)
    if not any(wall in walls for wall in SECOND_WALLS):
        text += (
            ". WARNING: no kernel wall beyond rlimits could be installed here (no seccomp, Landlock or "
            "root): code that escaped the policy could change this user's files and signal its processes"
        )
    return text
