"""Addresses, MTU, link state, routes and bridge membership over rtnetlink
(pyroute2), in the network namespace the process runs in."""

import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPBatch, IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tunnel.protocol.allowed_ips import Network
from tunnel.protocol.constants import UNDERLAY_MTU

from .routing import RT_TABLE_MAIN, InterfaceAddress

FIB_RULE_INVERT = 2  # <linux/fib_rules.h>: the rule matches what the selector does not
# FRA_PROTOCOL on pyvpn's own rules (`ip rule` shows "proto 245"), so that a killed
# run's are told from the user's; a value no routing daemon in iproute2's rt_protos uses.
RULE_PROTOCOL = 245
FIRST_TABLE = 51820  # where wg-quick starts looking for a free routing table
NLMSG_ERROR = 2  # <linux/netlink.h>: the kernel's answer to a request with NLM_F_ACK
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
RT_SCOPE_LINK = 253  # <linux/rtnetlink.h>
RT_SCOPE_UNIVERSE = 0
ROUTES_PER_BATCH = 256  # requests in one sendmsg: their acks fit the receive buffer


class LinkError(Exception):
    """A link, address or route change the kernel refused (errno: the kernel's)."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = code


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def configure(
    name: str,
    mtu: int,
    addresses: Iterable[InterfaceAddress],
    routes: Iterable[Network],
    bridge: str | None,
    table: int | None = None,
) -> None:
    """Bring the device up with its addresses and a route per allowed network (see
    _routed for which, and where).

    `mtu` is the tunnel's. A device joining a bridge gets the segment's MTU if that
    is larger: a bridge drops a frame bigger than the port's MTU without a trace,
    so the device takes the frames the segment's hosts send and pyvpn answers the
    ones too big for the tunnel with an ICMP error (tunnel/core/l2.py)."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        step = "set the MTU"
        try:
            master = None
            if bridge is not None:
                found = ipr.link_lookup(ifname=bridge)
                if not found:
                    raise LinkError(f"bridge {bridge} does not exist")
                master = found[0]
                # Read before attaching: afterwards the bridge follows its smallest port.
                mtu = max(mtu, ipr.get_links(master)[0].get("IFLA_MTU"))
            ipr.link("set", index=index, mtu=mtu)
            if master is not None:
                step = f"attach to bridge {bridge}"
                ipr.link("set", index=index, master=master)
                # Hairpin: frames between two peers turn around in the bridge and
                # come back to be relayed (split horizon keeps them off their source).
                step = f"turn hairpin mode on for its port of {bridge}"
                ipr.brport("set", index=index, mode=1)
            for address in addresses:
                step = f"add address {address}"
                ipr.addr(
                    "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
                )
            step = "bring the link up"
            ipr.link("set", index=index, state="up")
            covered = _covering(ipr, index, [a.network for a in addresses], table)
        except NetlinkError as e:
            raise LinkError(f"cannot {step} on {name}: {_reason(e)}") from None
    _change_routes("add", name, index, [n for n in routes if _routed(n, covered, table)], table)


def addresses(name: str, configured: Iterable[InterfaceAddress] = ()) -> list[InterfaceAddress]:
    """The device's addresses as they are now, in the kernel's order, but for the
    link-local ones the kernel made itself (those `configured` stay)."""
    configured = set(configured)
    with IPRoute() as ipr:
        try:
            found = [
                (_interface_address(a), a["scope"]) for a in ipr.get_addr(index=_index(ipr, name))
            ]
        except NetlinkError as e:
            raise LinkError(f"cannot read the addresses of {name}: {_reason(e)}") from None
    return [a for a, scope in found if scope != RT_SCOPE_LINK or a in configured]


def host_addresses(besides: str) -> list[InterfaceAddress]:
    """Every address of this host (its namespace) that others may reach it at:
    of global scope, on any device but loopback and `besides` (a tunnel's own)."""
    with IPRoute() as ipr:
        skip = {i for name in ("lo", besides) for i in ipr.link_lookup(ifname=name)}
        return [
            _interface_address(a)
            for a in ipr.get_addr()
            if a["scope"] == RT_SCOPE_UNIVERSE and a["index"] not in skip
        ]


def _interface_address(message: Any) -> InterfaceAddress:
    # IFA_LOCAL is the address itself; IFA_ADDRESS is the far end's on a
    # point-to-point IPv4 address, and IPv6 has only IFA_ADDRESS.
    address = message.get("IFA_LOCAL") or message.get("IFA_ADDRESS")
    return ipaddress.ip_interface(f"{address}/{message['prefixlen']}")


def set_mtu(name: str, mtu: int) -> None:
    """The device's MTU alone, the link left as it is."""
    with IPRoute() as ipr:
        try:
            ipr.link("set", index=_index(ipr, name), mtu=mtu)
        except NetlinkError as e:
            raise LinkError(f"cannot set the MTU on {name}: {_reason(e)}") from None


def update_routes(
    name: str,
    add: Iterable[Network],
    remove: Iterable[Network],
    table: int | None = None,
    allowed: Iterable[Network] = (),
) -> None:
    """Follow a change of the allowed networks on a running tunnel, as configure
    routes them; `allowed` are all of them before and after the change. A route
    the kernel refuses raises LinkError, and then none of `add` was added."""
    add, remove = list(add), list(remove)
    with IPRoute() as ipr:
        index = _index(ipr, name)
        connected = [
            ipaddress.ip_interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}").network
            for a in ipr.get_addr(index=index)
        ]
        # Only what covers the allowed networks without being one of them: a route
        # of pyvpn's own goes when its network does, and must not leave another
        # network it seemed to cover without a route.
        covered = _covering(ipr, index, connected, table, {*add, *remove, *allowed})
    gone = [n for n in remove if _routed(n, covered, table)]
    with contextlib.suppress(LinkError):  # already gone: fine
        _change_routes("del", name, index, gone, table)
    _change_routes("add", name, index, [n for n in add if _routed(n, covered, table)], table)


def _routed(network: Network, covered: list[Network], table: int | None) -> bool:
    """Whether an allowed network gets a route of its own through the device. In
    the main table (table None: wg-quick's Table = auto) a default route does not
    (full_tunnel), nor does a network a route of the device covers already: its
    own prefix's, or one the user added (wg-quick's add_route skips what `ip route
    show dev IFACE match CIDR` lists), so a hub whose address's prefix holds its
    peers adds no route for them. A table of the user's own (Table = N) gets every
    allowed network as it is, as wg-quick does it."""
    if table is not None:
        return True
    return network.prefixlen != 0 and not any(
        network.version == c.version and network.subnet_of(c) for c in covered
    )


def _covering(
    ipr: IPRoute,
    index: int,
    connected: list[Network],
    table: int | None,
    exclude: Iterable[Network] = (),
) -> list[Network]:
    """The networks the device's own prefixes (listed even before the kernel's
    prefix route appears) and its routes in the main table cover, those in
    `exclude` aside; none for a table of the user's, which gets every route
    (_routed)."""
    if table is not None:
        return []
    found = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(NetlinkError):  # a kernel without IPv6
            for route in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
                if route.get("RTA_OIF") != index or route.get("RTA_TABLE") != RT_TABLE_MAIN:
                    continue
                zero = "0.0.0.0" if family == socket.AF_INET else "::"
                dst = f"{route.get('RTA_DST') or zero}/{route['dst_len']}"
                found.add(ipaddress.ip_network(dst))
    return [*connected, *(found - set(exclude))]


def _change_routes(
    command: str, name: str, index: int, networks: list[Network], table: int | None
) -> None:
    """Add or delete a route through the device for each network, many to a
    netlink message (one request each, acknowledged each): thousands of peers
    outside the device's prefix cost milliseconds, not a round trip each. The
    first the kernel refuses raises LinkError, after the rest were tried; an add
    is all or nothing: the routes it did add are deleted again first."""
    if not networks:
        return
    done: list[Network] = []
    refused: tuple[Network, int] | None = None
    batch = IPBatch()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        for first in range(0, len(networks), ROUTES_PER_BATCH):
            chunk = networks[first : first + ROUTES_PER_BATCH]
            batch.reset()
            for seq, network in enumerate(chunk):
                offset = len(batch.batch)
                batch.route(command, dst=str(network), oif=index, **_in(table))
                struct.pack_into("=I", batch.batch, offset + 8, seq)
            sock.send(bytes(batch.batch))
            for seq, code in _acks(sock, len(chunk)):
                if not code:
                    done.append(chunk[seq])
                elif refused is None:
                    refused = (chunk[seq], code)
    if refused is not None:
        network, code = refused
        if command == "add":
            with contextlib.suppress(LinkError):
                _change_routes("del", name, index, done, table)
        verb = "add" if command == "add" else "remove"
        raise LinkError(f"cannot {verb} route {network} on {name}: {os.strerror(code)}", code)


def _acks(sock: socket.socket, count: int) -> list[tuple[int, int]]:
    """The (sequence, errno) of the next `count` acknowledgements on `sock`."""
    acks: list[tuple[int, int]] = []
    while len(acks) < count:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + NLMSGHDR.size <= len(data):
            length, kind, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + NLMSGHDR.size)
                acks.append((seq, -code))
            offset += max(length + 3 & ~3, NLMSGHDR.size)
    return acks


def _in(table: int | None) -> dict[str, int]:
    return {} if table is None else {"table": table}


def underlay_mtu(hosts: Iterable[str]) -> int:
    """The MTU on the way to the peers' endpoints (the largest, if they differ), else
    on the default route, else 1500: what wg-quick takes its 80 bytes from."""
    with IPRoute() as ipr:
        found = []
        for host in hosts:
            with contextlib.suppress(NetlinkError):  # no route to it (yet): not counted
                found += [_mtu(ipr, r) for r in ipr.route("get", dst=host)]
        if not any(found):
            for family in (socket.AF_INET, socket.AF_INET6):
                found += [_mtu(ipr, r) for r in ipr.get_default_routes(family=family)]
        return max(found, default=0) or UNDERLAY_MTU


def _mtu(ipr: IPRoute, route: Any) -> int:
    """A route's own MTU (`ip route ... mtu N`), else its device's; 0 if neither."""
    metrics = route.get_attr("RTA_METRICS")
    if metrics is not None and metrics.get_attr("RTAX_MTU"):
        return metrics.get_attr("RTAX_MTU")
    oif = route.get_attr("RTA_OIF")
    links = ipr.get_links(oif) if oif is not None else []
    return (links[0].get_attr("IFLA_MTU") or 0) if links else 0


def free_table() -> int:
    """The first routing table from 51820 that holds no route, as wg-quick picks one."""
    with IPRoute() as ipr:
        table = FIRST_TABLE
        while any(ipr.get_routes(family=f, table=table) for f in (socket.AF_INET, socket.AF_INET6)):
            table += 1
        return table


def full_tunnel(name: str, versions: Iterable[int], table: int) -> list[dict[str, Any]]:
    """A default route through the tunnel that does not capture the tunnel's own
    datagrams, the way wg-quick does it: the default route sits in its own table,
    which a rule consults for every packet NOT carrying fwmark `table` (the socket
    marks the tunnel's datagrams so); a rule before it looks up the main table
    ignoring its default route, so more specific routes (the LAN) still win.
    Returns the rules added, for remove_rules at teardown (the route goes with
    the device)."""
    added: list[dict[str, Any]] = []
    with IPRoute() as ipr:
        index = _index(ipr, name)
        # A killed run's, perhaps for this very table. `pyvpn up` swept just before;
        # this is for a full tunnel that `wg set` starts later.
        _remove_leftover_rules(ipr)
        try:
            for version in sorted(set(versions)):
                family = _family(version)
                ipr.route("add", dst="default", oif=index, table=table, family=family)
                # Ahead of the main table's rule, as `ip rule add` places a rule.
                first = min(
                    r.get("FRA_PRIORITY")
                    for r in ipr.get_rules(family=family)
                    if r.get("FRA_PRIORITY")
                )
                pair = _rule_pair(family, table)
                for rule, priority in zip(pair, (first - 2, first - 1), strict=True):
                    rule["priority"] = priority
                    ipr.rule("add", **rule)
                    added.append(rule)
        except NetlinkError as e:
            _delete_rules(ipr, added)
            raise LinkError(f"cannot route all traffic through {name}: {_reason(e)}") from None
    return added


def remove_leftover_rules() -> int:
    """Remove the full-tunnel rules of tunnels whose device is gone, a killed run's;
    returns how many went."""
    with IPRoute() as ipr:
        try:
            return _remove_leftover_rules(ipr)
        except NetlinkError as e:
            raise LinkError(f"cannot remove leftover rules: {_reason(e)}") from None


def _remove_leftover_rules(ipr: IPRoute) -> int:
    """pyvpn's rules (RULE_PROTOCOL) whose table holds no route of their family: the
    table's default route went with its device, so they route nothing. A live full
    tunnel's table always holds its default route (added before its rules, removed
    after them)."""
    gone = 0
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            rules = ipr.get_rules(family=family)
        except NetlinkError:  # a kernel without IPv6: no rules of it either
            continue
        for rule in rules:
            mark, table = rule.get("FRA_FWMARK"), rule.get("FRA_TABLE")
            suppress = rule.get("FRA_SUPPRESS_PREFIXLEN")
            ours = (
                rule.get("FRA_PROTOCOL") == RULE_PROTOCOL
                and rule["flags"] & FIB_RULE_INVERT
                and mark
                and (table == mark or (table == RT_TABLE_MAIN and suppress == 0))
            )
            if not ours or ipr.get_routes(family=family, table=mark):
                continue
            main, own = _rule_pair(family, mark)
            found = main if table == RT_TABLE_MAIN else own
            with contextlib.suppress(NetlinkError):  # another run removed it first
                ipr.rule("del", **found, priority=rule.get("FRA_PRIORITY"))
                gone += 1
    return gone


def end_full_tunnel(
    name: str, versions: Iterable[int], table: int, rules: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Undo full_tunnel for these IP versions: their default route in `table` and
    their rules go. Returns the rules that stay, the other versions'."""
    families = {_family(v) for v in versions}
    with IPRoute() as ipr:
        index = _index(ipr, name)
        # Rules before the route: a table with rules always holds its route, which
        # is how _remove_leftover_rules tells a live tunnel's rules from a dead one's.
        _delete_rules(ipr, [r for r in rules if r["family"] in families])
        for family in families:
            with contextlib.suppress(NetlinkError):  # already gone: fine
                ipr.route("del", dst="default", oif=index, table=table, family=family)
    return [r for r in rules if r["family"] not in families]


def _rule_pair(family: int, table: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A full tunnel's two rules for `family`, in order and without priorities: main
    without its default route, then `table`, both for packets not marked `table`.
    Unlike wg-quick's, the main-table rule also skips the tunnel's own datagrams,
    which changes nothing for them (main is looked up next anyway) but ties it to
    this table: each full tunnel has its own pair, and a killed run's pair is told
    by its empty table."""
    mine = dict(family=family, fwmark=table, flags=FIB_RULE_INVERT, protocol=RULE_PROTOCOL)
    return {**mine, "table": RT_TABLE_MAIN, "suppress_prefixlen": 0}, {**mine, "table": table}


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def remove_rules(rules: list[dict[str, Any]]) -> None:
    with IPRoute() as ipr:
        _delete_rules(ipr, rules)


def _delete_rules(ipr: IPRoute, rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        with contextlib.suppress(NetlinkError):  # already gone: fine
            ipr.rule("del", **rule)


def _reason(e: NetlinkError) -> str:
    return str(e.args[1] if len(e.args) > 1 else e)


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LinkError(f"device {name} vanished")
    return found[0]
