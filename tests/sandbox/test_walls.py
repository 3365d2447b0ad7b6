"""The kernel walls of `cap_app/sandbox/walls.py` one by one: the seccomp table against
libseccomp's, each layer alone, how they are reported. What escaped code can and cannot do
inside a fully sealed child is tested in test_os_escape.py."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct
import subprocess

import pytest

from cap_app.sandbox import sandbox_walls, walls
from tests.sandbox.conftest import in_child
from tests.sandbox.test_os_escape import RAW_SYSCALLS

MACHINE = os.uname().machine
LIBSECCOMP = ctypes.util.find_library("seccomp")


@pytest.mark.skipif(LIBSECCOMP is None, reason="libseccomp is not installed (Debian images have it: apt needs it)")
@pytest.mark.parametrize("machine", sorted(walls.ARCHES))
def test_system_call_numbers_match_libseccomps_table(machine):
    resolve = ctypes.CDLL(LIBSECCOMP).seccomp_syscall_resolve_name_arch
    resolve.argtypes, resolve.restype = [ctypes.c_uint32, ctypes.c_char_p], ctypes.c_int
    column, audit_arch = walls.ARCHES[machine]  # libseccomp's architecture tokens are AUDIT_ARCH_* too
    for name, numbers in {**walls.SYSCALLS, **RAW_SYSCALLS}.items():
        assert resolve(audit_arch, name.encode()) == numbers[column], (machine, name)


def test_the_filter_checks_the_architecture_first():
    """Load the arch; on this machine's AUDIT_ARCH go on, else kill (x86_64's i386 ABI, arm32)."""
    code = walls.seccomp_filter(MACHINE)
    first = [struct.unpack("=HBBI", code[i : i + 8]) for i in range(0, 24, 8)]
    assert first == [(0x20, 0, 0, 4), (0x15, 1, 0, walls.ARCHES[MACHINE][1]), (0x06, 0, 0, 0x80000000)]
    assert walls.seccomp_filter("riscv64") is None


def _seccomp_only(call):
    def action():
        walls.forbid_new_privileges()
        walls.install_seccomp()
        return call()

    return action


@pytest.mark.skipif(MACHINE != "x86_64", reason="x32 is an x86_64 ABI")
def test_x32_numbers_are_refused():
    """x32 calls carry x86_64's AUDIT_ARCH with bit 30 set in the number: none is in the table."""
    libc = ctypes.CDLL(None, use_errno=True)

    def x32_getpid():
        return libc.syscall(0x40000000 | 39), os.strerror(ctypes.get_errno())

    assert in_child(_seccomp_only(x32_getpid)) == "ok: (-1, 'Operation not permitted')"


def test_a_wall_that_cannot_be_installed_stops_the_child():
    """A filter forbids loading another: installing raises, so `seal` would (no run without it)."""
    outcome = in_child(_seccomp_only(walls.install_seccomp))
    assert outcome == "PermissionError: [Errno 1] seccomp: Operation not permitted"


@pytest.mark.skipif(walls.landlock_abi() == 0, reason="this kernel has no Landlock")
def test_landlock_alone_denies_every_path(user, canary):
    def try_paths():
        walls.forbid_new_privileges()
        walls.install_landlock()
        outcomes = []
        for attempt in (
            lambda: os.listdir("/"),
            lambda: open(canary).read(),
            lambda: open(canary, "a"),
            lambda: os.unlink(canary),
            lambda: os.execv("/bin/true", ["true"]),
        ):
            try:
                attempt()
                outcomes.append("ok")
            except OSError as exc:
                outcomes.append(exc.errno)
        return outcomes

    outcome = in_child(try_paths, user)
    assert outcome == "ok: [13, 13, 13, 13, 13]"  # EACCES each
    assert canary.exists()


@pytest.mark.skipif(walls.landlock_abi() < 6, reason="Landlock scopes signals from ABI 6")
def test_landlock_alone_denies_signals_outside(user):
    neighbour = subprocess.Popen(["sleep", "60"], user=user, group=user, extra_groups=[] if user else None)
    try:

        def signal_it():
            walls.forbid_new_privileges()
            walls.install_landlock()
            os.kill(neighbour.pid, 0)

        assert in_child(signal_it, user) == "PermissionError: [Errno 1] Operation not permitted"
    finally:
        neighbour.kill()
        neighbour.wait()


def test_the_network_namespace_has_only_loopback(user):
    def interfaces():
        return walls.enter_network_namespace(), [name for _, name in socket.if_nameindex()], os.getuid()

    assert in_child(interfaces, user) == f"ok: (True, ['lo'], {os.getuid() if user is None else user})"


def test_the_zygotes_report_their_walls(zygote_pids):
    found = sandbox_walls()
    assert found[0] == "rlimits" and "seccomp" in found
    assert ("landlock" in found) == (walls.landlock_abi() > 0)


def test_the_description_names_the_walls_or_warns():
    active = walls.describe(("rlimits", "netns", "landlock", "seccomp"))
    assert active == (
        "sandbox walls: RestrictedPython policy; rlimits (no new descriptor, process or file write), "
        "network namespace, Landlock (no file access), seccomp-bpf allowlist"
    )
    assert "WARNING: no kernel wall beyond rlimits" in walls.describe(("rlimits", "netns"))
    assert "WARNING" not in walls.describe(("rlimits", "chroot-nobody"))


def test_the_page_footer_names_the_walls(zygote_pids):
    from cap_app.ui.app import build_demo

    components = build_demo().get_config_file()["components"]
    (footer,) = [c["props"]["value"] for c in components if c["props"].get("elem_id") == "sandbox-walls"]
    assert footer == f"<small>{walls.describe(sandbox_walls())}</small>" and "seccomp-bpf allowlist" in footer
