"""The routing facts that the config, `pyvpn show` and the UAPI name, kept apart
from netlink.py so that reading them does not load pyroute2 (a third of a second
at every `pyvpn show`): an interface address, the kernel's reserved routing
tables, IP versions as text."""

import ipaddress
from collections.abc import Iterable

# An address of the device's own, with its prefix: 10.0.0.1/24.
InterfaceAddress = ipaddress.IPv4Interface | ipaddress.IPv6Interface
RT_TABLE_MAIN = 254  # <linux/rtnetlink.h>
RT_TABLE_LOCAL = 255
RESERVED_TABLES = {253: "default", RT_TABLE_MAIN: "main", RT_TABLE_LOCAL: "local"}


def ip_versions(versions: Iterable[int]) -> str:
    """IP versions as show and the log name them: "IPv4 and IPv6"."""
    return " and ".join(f"IPv{v}" for v in sorted(versions))


def numbered(table: str | int) -> int | None:
    """netlink's table for a config's `table`: a number of the user's, or None for
    wg-quick's "auto" (the main table, and a full tunnel's own)."""
    return table if isinstance(table, int) else None
