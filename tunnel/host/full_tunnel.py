"""A full tunnel: all traffic of an IP version goes through the tunnel while a
peer's allowed_ips hold that version's default route, at `pyvpn up` or later by
`wg set` and `pyvpn reload`. The policy is netlink.full_tunnel's; this keeps
what is in place, so a change adds or removes only the difference and teardown
removes the rest."""

import logging
import socket
from collections.abc import Iterable
from typing import Any

from tunnel.protocol.allowed_ips import Network

from . import netlink, nftables, udp
from .routing import InterfaceAddress, ip_versions

log = logging.getLogger("pyvpn")


def remove_leftovers() -> None:
    """Before a tunnel starts: the rules and firewall tables of full tunnels whose
    device is gone (killed runs, of any name) go. They route nothing any more, but
    the tables still drop packets for the old tunnel addresses."""
    try:
        rules = netlink.remove_leftover_rules()
        tables = nftables.remove_leftovers(netlink.link_exists)
    except netlink.LinkError as e:  # inert leftovers: not worth failing to start for
        log.warning("leftovers of killed full tunnels stay: %s", e)
        return
    if rules or tables:
        log.info(
            "removed what killed full tunnels left: %d ip rules; nftables tables: %s",
            rules,
            ", ".join(f"inet {t}" for t in tables) or "none",
        )


class FullTunnel:
    def __init__(self, name: str, sock: socket.socket, addresses: list[InterfaceAddress]) -> None:
        self.name, self.sock, self.addresses = name, sock, addresses
        self.versions: set[int] = set()  # IP versions routed through the tunnel
        self.table = 0  # the routing table, named by the socket's fwmark
        self.rules: list[dict[str, Any]] = []

    def fit(self, networks: Iterable[Network]) -> None:
        """Route through the tunnel exactly the IP versions whose default route is
        among the allowed networks. Blocking netlink work: not on the event loop."""
        wanted = {n.version for n in networks if n.prefixlen == 0}
        gone, new = self.versions - wanted, wanted - self.versions
        if not (gone or new):
            return
        if gone:
            self.rules = netlink.end_full_tunnel(self.name, gone, self.table, self.rules)
            self.versions -= gone
            log.info(
                "%s: %s traffic no longer goes through the tunnel", self.name, ip_versions(gone)
            )
        if new:
            if not self.versions:
                # The configured mark, else a free table; kept if the policy comes back.
                self.table = udp.mark(self.sock) or netlink.free_table()
                udp.set_mark(self.sock, self.table)
            self.rules += netlink.full_tunnel(self.name, new, self.table)
            self.versions |= new
            log.info(
                "%s: all %s traffic goes through the tunnel but its own (fwmark %#x)",
                self.name,
                ip_versions(new),
                self.table,
            )
        if self.versions:
            nftables.mark_replies(self.name, self.table, self.versions, self.addresses)
        else:
            nftables.remove(self.name)

    def remove(self) -> None:
        """At teardown: the rules and firewall marks go; the routes go with the device."""
        netlink.remove_rules(self.rules)
        if self.versions:
            try:
                nftables.remove(self.name)
            except netlink.LinkError as e:
                log.warning("%s", e)
