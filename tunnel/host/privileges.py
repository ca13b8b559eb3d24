"""Dropping root after setup (`user = "..."` in [interface]).

Everything that needs root happens before the drop: opening /dev/net/tun,
netlink configuration, binding the UDP port, creating the UAPI socket. Then the
process becomes `user`, keeps only CAP_NET_ADMIN (kept, not needed today by the
running tunnel, so that netlink changes such as an MTU update stay possible),
empties its capability bounding set and sets no_new_privs, so nothing it execs
can get root back either. Capabilities are per thread on Linux: call this before
the data plane starts its threads, which then inherit the reduced set.

One thing an unprivileged process cannot do is unlink its UAPI socket: it lives
in /var/run/wireguard, a directory owned by root, where `wg` looks for it. A
janitor, forked before the drop, does it: it stays uid 0 but with no
capabilities at all (enough to write a directory root owns), holds no file but
one pipe, and removes the socket when the pipe reports EOF, which happens however
the tunnel ends (also on SIGKILL).

Plain ctypes on glibc's prctl(2)/capset(2): no extra dependency for five calls.
"""

import ctypes
import os
import pwd
import signal
from pathlib import Path

CAP_NET_ADMIN = 12
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    """The drop failed; the tunnel must not go on running as root unasked."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise PrivilegeError(f"{what} failed: {os.strerror(errno)}")


def _prctl(option: int, arg: int, what: str) -> None:
    args = (ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    _check(_libc.prctl(ctypes.c_int(option), *args), what)


def _capset(capabilities: list[int]) -> None:
    mask = sum(1 << c for c in capabilities)
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    # Version 3 takes two 32-bit words: capabilities 0-31, then 32-63.
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = mask >> 32
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _last_capability() -> int:
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def drop_privileges(user: str, uapi_socket: Path) -> None:
    """Become `user` with CAP_NET_ADMIN only; a janitor removes `uapi_socket` at exit."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"no such user {user!r}") from None
    _start_janitor(uapi_socket)
    # The bounding set first: dropping from it needs CAP_SETPCAP, gone after setuid.
    for cap in range(_last_capability() + 1):
        if cap != CAP_NET_ADMIN:
            _prctl(PR_CAPBSET_DROP, cap, "dropping from the capability bounding set")
    _prctl(PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")
    try:
        os.setgroups([])
        os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
        # glibc applies set*id to every thread of the process, not only this one.
        os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    except OSError as e:
        raise PrivilegeError(f"switching to user {user}: {e.strerror}") from None
    _capset([CAP_NET_ADMIN])
    _prctl(PR_SET_KEEPCAPS, 0, "PR_SET_KEEPCAPS")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clearing ambient capabilities")
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")


def _start_janitor(path: Path) -> None:
    """Fork a capability-less uid-0 process that unlinks `path` when we are gone."""
    identity = os.stat(path)
    read_end, _write_end = os.pipe()  # ours stays open, unused, until we exit
    if os.fork() != 0:
        os.close(read_end)
        return
    try:
        _janitor(path, identity, read_end)
    finally:
        os._exit(0)  # never back into the tunnel's code, whatever happened


def _janitor(path: Path, identity: os.stat_result, read_end: int) -> None:
    # Ctrl-C reaches the whole process group: outlive the tunnel to clean up.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)
    # Let go of the device, the sockets and the tunnel's end of the pipe: the
    # TUN device disappears only when its last fd closes.
    os.closerange(3, read_end)
    os.closerange(read_end + 1, os.sysconf("SC_OPEN_MAX"))
    for cap in range(_last_capability() + 1):
        _prctl(PR_CAPBSET_DROP, cap, "dropping from the capability bounding set")
    _capset([])
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    while os.read(read_end, 1):
        pass
    # Only our socket: a new tunnel of the same name may have replaced it.
    now = os.stat(path)
    if (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino):
        os.unlink(path)
