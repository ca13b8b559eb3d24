"""The networks the scenarios measure: a LAN behind each of two gateways, and a
hub with spokes, each with pyvpn (native plane) in tun or in tap mode, or with
tinc in switch mode (tap devices, as pyvpn's tap mode has).

Two LANs, one per gateway (testbed.a and testbed.b), each a namespace of its own
with the LAN's hosts on a veth toward its gateway (MTU 1500, a standard LAN):

- tap: the gateway's veth and the tunnel's device (pyvpn's or tinc's) are ports
  of a Linux bridge; both LANs are one segment, one subnet (10.30.0.0/16, fd30::/64).
- tun: the gateway routes; each LAN is a subnet of its own (10.31.0.0/16 and
  fd31:1::/64 behind a, 10.32.0.0/16 and fd31:2::/64 behind b), and each peer's
  allowed_ips hold the other's LAN, so pyvpn routes it through the tunnel.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunnel.protocol import keys

from .. import tinc
from ..contenders import ETHERNET_HEADER, Skip, Tinc, check_plane, skip_unbuilt
from ..testbed import (
    INNER_A,
    INNER_A6,
    INNER_B,
    INNER_B6,
    Daemon,
    Namespace,
    Testbed,
    TunnelStartError,
    device_name,
    pyvpn_status,
    render_config,
    start_pyvpn,
    wait_reachable,
    write_pair_configs,
)
from .run import Run

DATAPATH = "native"
BRIDGE = "br0"
LAN_MTU = 1500
TAP_SUBNETS = ("10.30.0.0/16", "fd30::/64")
TUN_SUBNETS = (("10.31.0.0/16", "fd31:1::/64"), ("10.32.0.0/16", "fd31:2::/64"))


@dataclass(frozen=True)
class Lan:
    """One side's LAN: the namespace of its hosts, their veth toward the gateway,
    their subnets and the address of the one host that pings and runs iperf3."""

    gateway: Namespace
    hosts: Namespace
    dev: str
    subnet4: str
    subnet6: str
    host4: str
    host6: str


@dataclass(frozen=True)
class Port:
    """A device in a namespace whose counters a scenario reads."""

    ns: Namespace
    dev: str


@dataclass(frozen=True)
class Sites:
    mode: str
    lans: tuple[Lan, Lan]
    # The gateways' underlay veths (what crosses them is what the tunnel costs)
    # and their tunnel devices, side a's first.
    underlay: tuple[Port, Port]
    tunnels: tuple[Port, Port]
    pids: list[int]


def _nth(subnet: str, n: int) -> str:
    return str(ipaddress.ip_network(subnet)[n])


def _prefix(subnet: str) -> int:
    return ipaddress.ip_network(subnet).prefixlen


def _lan(tb: Testbed, side: int, mode: str) -> Lan:
    gateway = tb.namespaces[side]
    hosts = tb.add_namespace(f"l{'ab'[side]}")
    if mode == "tap":
        subnet4, subnet6 = TAP_SUBNETS
        # One subnet: the real hosts are .1 (side a) and .2 (side b).
        host4, host6 = _nth(subnet4, side + 1), _nth(subnet6, side + 1)
        tb.add_bridge(gateway, BRIDGE)
        tb.link(
            gateway,
            hosts,
            [],
            [f"{host4}/{_prefix(subnet4)}", f"{host6}/64"],
            bridge1=BRIDGE,
            mtu=LAN_MTU,
        )
    else:
        subnet4, subnet6 = TUN_SUBNETS[side]
        # The gateway is .1, the real host .2, which routes everything through it.
        gw4, gw6 = _nth(subnet4, 1), _nth(subnet6, 1)
        host4, host6 = _nth(subnet4, 2), _nth(subnet6, 2)
        tb.link(
            gateway,
            hosts,
            [f"{gw4}/{_prefix(subnet4)}", f"{gw6}/64"],
            [f"{host4}/{_prefix(subnet4)}", f"{host6}/64"],
            mtu=LAN_MTU,
        )
        hosts.run("ip", "route", "add", "default", "via", gw4)
        hosts.run("ip", "-6", "route", "add", "default", "via", gw6)
        gateway.sysctl("net.ipv4.ip_forward", 1)
        gateway.sysctl("net.ipv6.conf.all.forwarding", 1)
    return Lan(gateway, hosts, f"to-{gateway.label}", subnet4, subnet6, host4, host6)


def start_native(ns: Namespace, path: Path) -> Daemon:
    """`pyvpn up` on the native plane, or Skip if it is not built here."""
    try:
        daemon = start_pyvpn(ns, path)
    except TunnelStartError as exc:
        skip_unbuilt(exc, DATAPATH)
        raise
    try:
        check_plane(daemon.name, DATAPATH)
    except Skip:
        daemon.stop()
        raise
    return daemon


@contextlib.contextmanager
def two_lans(tb: Testbed, workdir: Path, mode: str, mtu: int) -> Iterator[Sites]:
    """A LAN behind each of tb.a and tb.b, joined by pyvpn in `mode`; the tunnel's
    inner MTU is `mtu`, the LANs' 1500."""
    lans = (_lan(tb, 0, mode), _lan(tb, 1, mode))
    if mode == "tap":
        bridged = {"bridge": BRIDGE, "address": None}
        overrides: dict[str, Any] = {
            "interface_a": bridged,
            "interface_b": bridged,
            "peer_a": {"allowed_ips": None},
            "peer_b": {"allowed_ips": None},
        }
    else:
        own = [[f"{INNER_B}/32", f"{INNER_B6}/128"], [f"{INNER_A}/32", f"{INNER_A6}/128"]]
        allowed = [own[i] + [lans[1 - i].subnet4, lans[1 - i].subnet6] for i in (0, 1)]
        overrides = {"peer_a": {"allowed_ips": allowed[0]}, "peer_b": {"allowed_ips": allowed[1]}}
    paths = write_pair_configs(workdir, mode, DATAPATH, mtu=mtu, **overrides)
    with contextlib.ExitStack() as stack:
        daemons = [
            stack.enter_context(start_native(ns, p))
            for ns, p in zip((tb.a, tb.b), paths, strict=True)
        ]
        wait_reachable(lans[0].hosts, lans[1].host4)
        yield Sites(
            mode,
            lans,
            (Port(tb.a, tb.a_veth), Port(tb.b, tb.b_veth)),
            (Port(tb.a, daemons[0].name), Port(tb.b, daemons[1].name)),
            [d.pid for d in daemons],
        )


# What the scenarios that send full-size LAN packets say of tinc, instead of figures.
TINC_FULL_SIZE = {
    "tinc-switch": "not run: full-size LAN packets; tinc's device here is a bridge "
    "port with the tunnel's MTU, so the bridge drops a 1500-byte frame before tinc "
    "sees it, and the figures would show that, not tinc"
}


@contextlib.contextmanager
def two_lans_tinc(tb: Testbed, workdir: Path, mtu: int) -> Iterator[Sites]:
    """The two tap LANs of two_lans, joined by tinc in switch mode: its device is a
    port of each gateway's bridge; a's tincd connects to b's."""
    lans = (_lan(tb, 0, "tap"), _lan(tb, 1, "tap"))
    devices = [device_name("tcsw", side) for side in "ab"]
    dirs = [
        tinc.make_peer(
            workdir,
            name=side,
            device=device,
            mode="tap",
            local=local,
            inner=None,
            mtu=mtu,
            bridge=BRIDGE,
            pmtu=mtu + ETHERNET_HEADER,
        )
        for side, device, local in zip("ab", devices, (tb.a_addr, tb.b_addr), strict=True)
    ]
    tinc.connect(dirs[0], dirs[1])
    with tinc.daemons([(tb.b, dirs[1]), (tb.a, dirs[0])]) as (b, a):
        wait_reachable(lans[0].hosts, lans[1].host4)
        yield Sites(
            "tap",
            lans,
            (Port(tb.a, tb.a_veth), Port(tb.b, tb.b_veth)),
            (Port(tb.a, devices[0]), Port(tb.b, devices[1])),
            [a.pid, b.pid],
        )


def two_lans_setup(run: Run) -> contextlib.AbstractContextManager[Sites]:
    """two_lans, or two_lans_tinc for tinc, as a scenario's setup."""
    if isinstance(run.variant, Tinc):
        return two_lans_tinc(run.tb, run.workdir, run.settings.mtu)
    return two_lans(run.tb, run.workdir, run.mode, run.settings.mtu)


# ---------------------------------------------------------------------------
# A hub with spokes

HUB_SUBNET = "10.10.0.0/24"


@dataclass(frozen=True)
class Star:
    mode: str
    hub: Namespace
    spokes: list[Namespace]
    hub_dev: str
    spoke_devs: list[str]
    spoke_addrs: list[str]  # each spoke's inner address
    underlay: list[Port]  # the hub's veth toward each spoke
    hub_pid: int


def _star_configs(
    workdir: Path, mode: str, mtu: int, names: list[str], underlay: list[tuple[str, str]]
) -> list[Path]:
    """The hub (names[0], 10.10.0.1) with one peer per spoke; spoke i is 10.10.0.(i+2),
    reaches the hub at underlay[i][0] and is reached at underlay[i][1]."""
    private = [keys.generate_private_key() for _ in names]
    public = [keys.encode(keys.public_key(k)) for k in private]
    addrs = [_nth(HUB_SUBNET, i + 1) for i in range(len(names))]
    common = {"mode": mode, "listen_port": 51820, "datapath": DATAPATH, "mtu": mtu}
    tun = mode == "tun"
    tables = [
        (
            {
                "name": names[0],
                "private_key": keys.encode(private[0]),
                **common,
                "address": [f"{addrs[0]}/24"],
            },
            [
                {
                    "public_key": public[i + 1],
                    "endpoint": f"{spoke}:51820",
                    "allowed_ips": [f"{addrs[i + 1]}/32"] if tun else None,
                }
                for i, (_, spoke) in enumerate(underlay)
            ],
        )
    ]
    for i, (hub, _) in enumerate(underlay):
        tables.append(
            (
                {
                    "name": names[i + 1],
                    "private_key": keys.encode(private[i + 1]),
                    **common,
                    "address": [f"{addrs[i + 1]}/24"],
                },
                # Keepalives from the start: the hub learns every spoke's endpoint at once.
                [
                    {
                        "public_key": public[0],
                        "endpoint": f"{hub}:51820",
                        "persistent_keepalive": 25,
                        "allowed_ips": [HUB_SUBNET] if tun else None,
                    }
                ],
            )
        )
    paths = []
    for (interface, peers), name in zip(tables, names, strict=True):
        path = workdir / f"{name}.toml"
        path.write_text(render_config(interface, peers))
        path.chmod(0o600)
        paths.append(path)
    return paths


def _spokes(tb: Testbed) -> tuple[list[Port], list[tuple[str, str]]]:
    """A veth from the hub (tb.namespaces[0]) to every other namespace: the hub's
    end of each, and the addresses (hub's, spoke's) on each."""
    for ns in tb.namespaces:
        # No IPv6 on the tunnel devices: no router solicitations or MLD reports of
        # their own among the bytes counted.
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
    hub, spokes = tb.namespaces[0], tb.namespaces[1:]
    links = [tb.links[0]]
    for i, spoke in enumerate(spokes[1:], start=2):
        links.append(tb.link(hub, spoke, [f"198.18.{i}.1/24"], [f"198.18.{i}.2/24"]))
    underlay = [(tb.a_addr, tb.b_addr)] + [
        (f"198.18.{i}.1", f"198.18.{i}.2") for i in range(2, len(spokes) + 1)
    ]
    return [Port(hub, link.dev1) for link in links], underlay


def _star_names(kind: str, spokes: int) -> list[str]:
    return [device_name(kind, c) for c in "hbcdefghijklmnopqrstuvwxyz"[: spokes + 1]]


@contextlib.contextmanager
def star(tb: Testbed, workdir: Path, mode: str, mtu: int) -> Iterator[Star]:
    """pyvpn on tb.namespaces[0] (the hub) with every other namespace as a spoke,
    each over a veth of its own; the hub's device has no bridge."""
    ports, underlay = _spokes(tb)
    hub, spokes = tb.namespaces[0], tb.namespaces[1:]
    names = _star_names(f"pv{mode}", len(spokes))
    paths = _star_configs(workdir, mode, mtu, names, underlay)
    with contextlib.ExitStack() as stack:
        daemons = [
            stack.enter_context(start_native(ns, p))
            for ns, p in zip(tb.namespaces, paths, strict=True)
        ]
        deadline = time.monotonic() + 15
        while not all(p["has_session"] for p in pyvpn_status(names[0])["peers"]):
            if time.monotonic() > deadline:
                raise TimeoutError("the hub has no session with every spoke within 15 s")
            time.sleep(0.1)
        addrs = [_nth(HUB_SUBNET, i + 2) for i in range(len(spokes))]
        yield Star(mode, hub, spokes, names[0], names[1:], addrs, ports, daemons[0].pid)


@contextlib.contextmanager
def star_tinc(tb: Testbed, workdir: Path, mtu: int) -> Iterator[Star]:
    """The star of `star` with tinc in switch mode: every spoke's tincd connects
    to the hub's, which listens on all its underlay addresses."""
    ports, underlay = _spokes(tb)
    hub, spokes = tb.namespaces[0], tb.namespaces[1:]
    names = _star_names("tcsw", len(spokes))
    addrs = [_nth(HUB_SUBNET, i + 1) for i in range(len(names))]
    locals_ = [None] + [spoke for _, spoke in underlay]
    dirs = [
        tinc.make_peer(
            workdir,
            name=f"n{i}",
            device=name,
            mode="tap",
            local=local,
            inner=addr,
            mtu=mtu,
            pmtu=mtu + ETHERNET_HEADER,
        )
        for i, (name, local, addr) in enumerate(zip(names, locals_, addrs, strict=True))
    ]
    for spoke, (hub_addr, _) in zip(dirs[1:], underlay, strict=True):
        tinc.connect(spoke, dirs[0], hub_addr)
    with tinc.daemons(list(zip(tb.namespaces, dirs, strict=True))) as daemons:
        for addr in addrs[1:]:
            # Each spoke answers: the keys are exchanged both ways before anything is timed.
            wait_reachable(hub, addr)
        yield Star("tap", hub, spokes, names[0], names[1:], addrs[1:], ports, daemons[0].pid)


def star_setup(run: Run) -> contextlib.AbstractContextManager[Star]:
    """star, or star_tinc for tinc, as a scenario's setup."""
    if isinstance(run.variant, Tinc):
        return star_tinc(run.tb, run.workdir, run.settings.mtu)
    return star(run.tb, run.workdir, run.mode, run.settings.mtu)


# ---------------------------------------------------------------------------
# Counters


@dataclass(frozen=True)
class Counters:
    packets: int
    bytes: int

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.packets - other.packets, self.bytes - other.bytes)


def counters(ports: Iterable[Port], direction: str = "tx") -> Counters:
    """What the devices sent ("tx") or received ("rx"), summed: packets and bytes
    as the kernel counts them (Ethernet frames on a veth; a GSO batch as one)."""
    packets = size = 0
    for port in ports:
        info = json.loads(port.ns.run("ip", "-j", "-s", "link", "show", port.dev).stdout)[0]
        stats = info["stats64"][direction]
        packets, size = packets + int(stats["packets"]), size + int(stats["bytes"])
    return Counters(packets, size)
