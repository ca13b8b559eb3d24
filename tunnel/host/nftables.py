"""A full tunnel's firewall marks, the ones wg-quick sets, so that strict
reverse-path filtering (rp_filter=1) passes the tunnel's own replies: an
unmarked lookup of the endpoint's address would lead into the tunnel, not out of
the interface the reply came in on.

- The tunnel's outgoing datagrams (fwmark M) leave M in their conntrack entry;
  replies get M back as their mark, and net.ipv4.conf.all.src_valid_mark=1 makes
  the reverse-path lookup use it, so it skips the tunnel's table.
- Packets for the tunnel's own addresses that come in on another interface are
  dropped, unless they come from this host: nobody on the LAN may reach them.

Through libnftables in-process (as python3-nftables does, with ctypes) rather
than an `nft` child: after the drop to `user` this process keeps CAP_NET_ADMIN,
but cannot hand it to a program it runs."""

import ctypes
import functools
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from .netlink import InterfaceAddress, LinkError

SRC_VALID_MARK = Path("/proc/sys/net/ipv4/conf/all/src_valid_mark")


def mark_replies(
    name: str, mark: int, versions: Collection[int], addresses: Iterable[InterfaceAddress]
) -> None:
    """Put the table of `name`'s full tunnel (of IP `versions`) in place, replacing
    any earlier one in the same transaction."""
    table = _table(name)
    commands = [
        *_deleted(table),
        f"add table inet {table}",
        f"add chain inet {table} preraw {{ type filter hook prerouting priority -300; }}",
        f"add chain inet {table} premangle {{ type filter hook prerouting priority -150; }}",
        f"add chain inet {table} postmangle {{ type filter hook postrouting priority -150; }}",
    ]
    for address in (a for a in addresses if a.version in versions):
        family = "ip" if address.version == 4 else "ip6"
        commands.append(
            f'add rule inet {table} preraw iifname != "{name}" {family} daddr {address.ip} '
            "fib saddr type != local drop"
        )
    commands += [
        f"add rule inet {table} postmangle meta l4proto udp mark {mark:#x} ct mark set mark",
        f"add rule inet {table} premangle meta l4proto udp meta mark set ct mark",
    ]
    _run(f"set the firewall marks of {name}", commands)
    if 4 in versions:  # IPv6 has no rp_filter sysctl: only nftables' fib checks it
        try:
            SRC_VALID_MARK.write_text("1\n")
        except OSError as e:
            raise LinkError(f"cannot set {SRC_VALID_MARK}: {e.strerror}") from None


def remove(name: str) -> None:
    _run(f"remove the firewall marks of {name}", _deleted(_table(name)))


def remove_leftovers(live: Callable[[str], bool]) -> list[str]:
    """Delete the tables of tunnels whose device is gone (a killed run's, which
    would still drop packets for its old addresses); returns their names. The
    table goes before its device at teardown, so a live tunnel's is never taken.
    Without libnftables no full tunnel could have made one."""
    try:
        listed = _run("list the firewall tables", ["list tables inet"])
    except LinkError:
        return []
    prefix = f"table inet {_table('')}"
    gone = []
    for line in listed.splitlines():
        name = _device(line.removeprefix(prefix))
        if line.startswith(prefix) and not live(name):
            remove(name)  # whether or not another starting run removed it first
            gone.append(_table(name))
    return gone


def _deleted(table: str) -> list[str]:
    # Added first, so that deleting it succeeds whether or not it was there.
    return [f"add table inet {table}", f"delete table inet {table}"]


# nft takes no quoted table name, and no '+' or '=' in one, which a device name
# (config.IFNAME) may hold; '/' it takes, and a device name never holds.
_ESCAPES = {"+": "/2b", "=": "/3d"}


def _table(name: str) -> str:
    for char, escape in _ESCAPES.items():
        name = name.replace(char, escape)
    return f"pyvpn-{name}"


def _device(escaped: str) -> str:
    """The device name of a table's _table(name) less its prefix."""
    for char, escape in _ESCAPES.items():
        escaped = escaped.replace(escape, char)
    return escaped


def _run(what: str, commands: list[str]) -> str:
    """Run nft commands in one transaction; returns what they print."""
    lib = _load()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise LinkError(f"cannot {what}: nft_ctx_new failed")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if lib.nft_run_cmd_from_buffer(ctx, "\n".join(commands).encode()) != 0:
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            lines = [line for line in error.splitlines() if line.startswith("Error")]
            reason = lines[0] if lines else error.strip() or "failed"
            raise LinkError(f"cannot {what}: nftables: {reason}")
        return (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
    finally:
        lib.nft_ctx_free(ctx)


@functools.cache
def _load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libnftables.so.1")
    except OSError:
        raise LinkError(
            "a full tunnel needs libnftables (apt install nftables) for its firewall marks"
        ) from None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    for f in (lib.nft_ctx_free, lib.nft_ctx_buffer_output, lib.nft_ctx_buffer_error):
        f.argtypes = [ctypes.c_void_p]
    for f in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
        f.restype = ctypes.c_char_p
        f.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib
