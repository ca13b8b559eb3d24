"""pyvpn tap tunnels between real network namespaces: two Ethernet segments, each a
Linux bridge with a host on it, joined into one by real TAP devices and real pyvpn
processes; a hub whose learning switch serves three spokes; a tap end meeting a
tun end."""

import contextlib
import json
import os
import re
import shutil
import signal
import struct
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tunnel.control.config import load
from tunnel.lab.testbed import (
    Daemon,
    Namespace,
    device_name,
    pyvpn_status,
    render_config,
    start_pyvpn,
    wait_reachable,
    write_pair_configs,
)
from tunnel.protocol import keys

from .bed import Testbed, star_bed, write_star_configs
from .conftest import ROOT, pyvpn
from .packets import (
    VIRTIO_NET_HDR_GSO_TCPV4,
    ether,
    ip4,
    partial_tcp_csum,
    tcp_segment,
    virtio_net_hdr,
    vlan_tag,
)
from .traffic import (
    BROADCAST,
    ETH_P_ALL,
    QUIET,
    Capture,
    Frame,
    capture_frames,
    captures,
    send_frames,
    send_offloaded_frame,
    tcp_transfer,
)
from .waiting import wait_until

BRIDGE = "br0"
HOST_X, HOST_Y = "10.30.0.1", "10.30.0.2"
HOST_X6, HOST_Y6 = "fd30::1", "fd30::2"
TAP_MTU = 1406  # the default: 1500 - IPv6 - UDP - WireGuard - Ethernet header


def start(ns: Namespace, path: Path, datapath: str) -> Daemon:
    """start_pyvpn, failing unless the tunnel runs the data plane asked for."""
    daemon = start_pyvpn(ns, path)
    running = pyvpn_status(daemon.name)["datapath"]
    if running != datapath:
        daemon.stop()
        pytest.fail(f"asked for the {datapath} data plane, pyvpn show says {running}")
    return daemon


def link_mac(ns: Namespace, dev: str) -> str:
    return json.loads(ns.run("ip", "-j", "link", "show", dev).stdout)[0]["address"]


def link_mtu(ns: Namespace, dev: str) -> int:
    return json.loads(ns.run("ip", "-j", "link", "show", dev).stdout)[0]["mtu"]


def link_local(ns: Namespace, dev: str) -> str:
    info = json.loads(ns.run("ip", "-j", "-6", "addr", "show", dev).stdout)
    return next(a["local"] for a in info[0]["addr_info"] if a.get("scope") == "link")


def macs_by_peer(name: str) -> dict[str, list[str]]:
    """`pyvpn show --json`: the MAC addresses learned behind each peer, by public key."""
    peers = pyvpn_status(name)["peers"]
    return {p["public_key"]: sorted(m["mac"] for m in p["macs"]) for p in peers}


def marker(label: str) -> bytes:
    # 64 bytes: well above Ethernet's 46-byte minimum, so no padding blurs the comparison.
    return f"pyvpn tap test {label}".encode().ljust(64, b".")


def arrived(payload: bytes, expected: list[int]) -> Callable[[list[Capture]], bool]:
    """Whether each capture has at least its `expected` number of `payload` frames."""
    return lambda seen: all(s.count(payload) >= n for s, n in zip(seen, expected, strict=True))


def bad_source(name: str) -> dict[str, int]:
    """Frames `name` dropped for a source MAC address the peer may not send from,
    by the peer's public key."""
    return {p["public_key"]: p["drops"]["bad_source"] for p in pyvpn_status(name)["peers"]}


# ---------------------------------------------------------------------------
# Two bridged segments: host x - br0 in gateway a ==tunnel== gateway b - br0 - host y


@pytest.fixture
def segments(bed: Testbed) -> tuple[Namespace, Namespace]:
    """Hosts x and y, each on bridge br0 of its gateway (bed.a, bed.b), one subnet."""
    hosts = bed.add_namespace("x"), bed.add_namespace("y")
    for gateway, host, v4, v6 in ((bed.a, hosts[0], HOST_X, HOST_X6),
                                  (bed.b, hosts[1], HOST_Y, HOST_Y6)):  # fmt: skip
        bed.add_bridge(gateway, BRIDGE)
        bed.link(gateway, host, [], [f"{v4}/24", f"{v6}/64"], bridge1=BRIDGE)
    return hosts


def host_dev(gateway: Namespace) -> str:
    """A host's veth toward its gateway (Testbed.link names it after the other end)."""
    return f"to-{gateway.label}"


@contextlib.contextmanager
def bridged_pair(bed: Testbed, directory: Path, datapath: str) -> Iterator[tuple[Daemon, Daemon]]:
    """pyvpn tap on both gateways, each device on br0 with no address and no allowed_ips."""
    bridged = {"bridge": BRIDGE, "address": None}
    no_allowed_ips = {"allowed_ips": None}
    path_a, path_b = write_pair_configs(
        directory, "tap", datapath, interface_a=bridged, interface_b=bridged,
        peer_a=no_allowed_ips, peer_b=no_allowed_ips,
    )  # fmt: skip
    with start(bed.a, path_a, datapath) as a, start(bed.b, path_b, datapath) as b:
        yield a, b


def test_bridged_segments_are_one_ethernet_segment(bed, segments, tmp_path, datapath):
    x, y = segments
    dev_x, dev_y = host_dev(bed.a), host_dev(bed.b)
    mac_x, mac_y = link_mac(x, dev_x), link_mac(y, dev_y)
    with bridged_pair(bed, tmp_path, datapath) as (a, b):
        # IPv4 over ARP (a broadcast) resolved across the tunnel.
        wait_reachable(x, HOST_Y, timeout=15)
        assert " 0% packet loss" in x.run("ping", "-c", "3", "-i", "0.2", HOST_Y).stdout
        neighbour = x.run("ip", "neigh", "show", HOST_Y, "dev", dev_x).stdout
        assert f"lladdr {mac_y}" in neighbour
        # IPv6: neighbour discovery (multicast), global and link-local addresses.
        wait_reachable(x, HOST_Y6)
        ll_y = link_local(y, dev_y)
        ping6 = x.run("ping", "-6", "-c", "3", "-i", "0.2", "-w", "10", f"{ll_y}%{dev_x}")
        assert " 0% packet loss" in ping6.stdout
        # Frames of a non-IP ethertype, to unicast, broadcast and multicast destinations.
        sent = [
            Frame(mac_y, mac_x, marker("unicast")),
            Frame(BROADCAST, mac_x, marker("broadcast")),
            Frame("03:b5:00:00:00:01", mac_x, marker("multicast")),
        ]
        with capture_frames(y, dev_y, until=lambda seen: len(seen) >= 3, quiet=QUIET) as seen:
            for frame in sent:
                send_frames(x, dev_x, frame.destination, frame.payload)
        assert sorted(seen, key=repr) == sorted(sent, key=repr)
        # Each gateway lists the far host's MAC behind its one peer.
        assert mac_y in next(iter(macs_by_peer(a.name).values()))
        assert mac_x in next(iter(macs_by_peer(b.name).values()))
        # tap peers need no allowed_ips: none given, nothing to warn about.
        assert "allowed_ips" not in a.output() + b.output()


def test_teardown_leaves_the_bridge_and_removes_the_device(bed, segments, tmp_path, datapath):
    with bridged_pair(bed, tmp_path, datapath) as (a, _):
        members = bed.a.run("ip", "-o", "link", "show", "master", BRIDGE).stdout
        assert f" {a.name}:" in members and f" {host_dev(segments[0])}@" in members
        status = pyvpn_status(a.name)
        assert status["bridge"] == BRIDGE and status["mac_ageing"] == 300
        assert f"  bridge: {BRIDGE}\n" in pyvpn("show", a.name, netns=bed.a.name).stdout
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(timeout=10) == 0
        assert not bed.a.has_link(a.name)
        members = bed.a.run("ip", "-o", "link", "show", "master", BRIDGE).stdout
        assert a.name not in members and f" {host_dev(segments[0])}@" in members


def test_oversized_frames_get_icmp_errors_not_a_black_hole(bed, segments, tmp_path, datapath):
    x, y = segments
    with bridged_pair(bed, tmp_path, datapath) as (a, _):
        # The tunnel carries 1406-byte packets, the device takes the segment's 1500.
        assert pyvpn_status(a.name)["mtu"] == TAP_MTU
        assert link_mtu(bed.a, a.name) == 1500
        wait_reachable(x, HOST_Y, timeout=15)
        wait_reachable(x, HOST_Y6)
        # Full-size packets with Don't Fragment: the sender hears why, and how big.
        ping = x.run("ping", "-M", "do", "-s", "1472", "-c", "3", "-i", "0.3", "-W", "1",
                     HOST_Y, check=False)  # fmt: skip
        assert re.search(rf"mtu ?= ?{TAP_MTU}\b", ping.stdout + ping.stderr), ping.stdout
        ping6 = x.run("ping", "-6", "-M", "do", "-s", "1452", "-c", "3", "-i", "0.3", "-W", "1",
                      HOST_Y6, check=False)  # fmt: skip
        assert re.search(rf"mtu ?= ?{TAP_MTU}\b", ping6.stdout + ping6.stderr), ping6.stdout
        # TCP between 1500-MTU hosts learns the path MTU and completes.
        for server, client, address in ((y, x, HOST_Y), (x, y, HOST_X6)):
            sent, received = tcp_transfer(server, client, address, 2 << 20, timeout=60)
            assert sent == received


def test_tcp_super_frames_on_a_vlan_arrive_whole_on_the_vlan(bed, segments, tmp_path, datapath):
    """A host's TSO hands its bridge TCP super-frames of up to 64 KB, and on a VLAN
    the tag sits in the frame. The far host gets the same TCP bytes, on the same
    VLAN. (This kernel has no 8021q module for a VLAN device, so host x writes the
    super-frame itself, with PACKET_VNET_HDR.)"""
    x, y = segments
    dev_x, dev_y = host_dev(bed.a), host_dev(bed.b)
    mac_x, mac_y = (
        bytes.fromhex(link_mac(h, d).replace(":", "")) for h, d in ((x, dev_x), (y, dev_y))
    )
    payload, l3 = os.urandom(20000), 14 + 4
    ip = partial_tcp_csum(tcp_segment(HOST_X, HOST_Y, 1000, payload, flags=0x18))
    super_frame = ether(mac_y, mac_x, ip, vlan_tag(10))
    from_x = ip4(HOST_X)

    def tcp_from_x(frames: list[Frame]) -> list[Frame]:
        return [
            f
            for f in frames
            if f.payload[0] == 0x45 and f.payload[9] == 6 and f.payload[12:16] == from_x
        ]

    def whole(frames: list[Frame]) -> bool:
        return sum(len(f.payload) - 40 for f in tcp_from_x(frames)) >= len(payload)

    with bridged_pair(bed, tmp_path, datapath):
        wait_reachable(x, HOST_Y, timeout=15)
        # QUIET: a segment arriving twice is an error too.
        with capture_frames(y, dev_y, ethertype=ETH_P_ALL, until=whole, quiet=QUIET) as seen:
            offload = virtio_net_hdr(VIRTIO_NET_HDR_GSO_TCPV4, l3 + 40, 1000, l3 + 20)
            send_offloaded_frame(x, dev_x, offload + super_frame)
    tcp = tcp_from_x(seen)
    assert tcp, "nothing of the super-frame arrived"
    assert {f.vlan for f in tcp} == {10}
    by_seq = sorted((struct.unpack_from("!I", f.payload, 24)[0], f.payload[40:]) for f in tcp)
    assert b"".join(data for _, data in by_seq) == payload
    assert by_seq[0][0] == 1000


# ---------------------------------------------------------------------------
# A hub with three spokes: pyvpn's learning switch


SPOKE_MACS = ["02:00:00:00:b5:01", "02:00:00:00:b5:02", "02:00:00:00:b5:03"]
MAC_AGEING = 5


@dataclass
class Star:
    """A tap hub (namespaces[0]) and three spokes, each tunnel up and in session."""

    bed: Testbed
    hub: Namespace
    spokes: list[Namespace]
    names: list[str]  # the hub's device, then each spoke's
    daemons: list[Daemon]


@contextlib.contextmanager
def running_star(
    tmp_path: Path,
    datapath: str,
    tag: str,
    hub: dict[str, Any] | None = None,
    bridged: bool = False,
    hub_peers: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Iterator[Star]:
    """`hub`: settings of the hub's interface; `bridged`: its device joins a bridge
    br0; `hub_peers`: edits the hub's [[peer]] tables before it starts."""
    with star_bed(tag) as bed, contextlib.ExitStack() as stack:
        hub_ns, spokes = bed.namespaces[0], bed.namespaces[1:]
        for ns in bed.namespaces:
            # A tap device with IPv6 sends router solicitations and MLD reports on its
            # own: without IPv6 the frames we count are only the test's.
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
        settings = dict(hub or {})
        if bridged:
            settings["bridge"] = bed.add_bridge(hub_ns, "br0")
        names = [device_name(f"pv{tag}", c) for c in "hbcd"]
        # No addresses: the only frames are the test's. The spokes handshake at
        # once, so the hub knows every spoke's endpoint.
        paths = write_star_configs(
            tmp_path, names, datapath, "tap",
            hub={"mac_ageing": MAC_AGEING, **settings},
            spoke_peer=lambda i: {"persistent_keepalive": 25},
        )  # fmt: skip
        if hub_peers is not None:
            config = tomllib.loads(paths[0].read_text())
            hub_peers(config["peer"])
            paths[0].write_text(render_config(config["interface"], config["peer"]))
        daemons = [stack.enter_context(start(ns, p, datapath))
                   for ns, p in zip(bed.namespaces, paths, strict=True)]  # fmt: skip
        wait_until(lambda: all(p["has_session"] for p in pyvpn_status(names[0])["peers"]),
                   "session with every spoke", poll=0.1)  # fmt: skip
        yield Star(bed, hub_ns, spokes, names, daemons)


@pytest.mark.netns
def test_hub_is_a_learning_switch_with_ageing(tmp_path, datapath):
    with running_star(tmp_path, datapath, "sw") as star:
        hub, spokes, daemons = star.hub, star.spokes, star.daemons
        hub_dev, spoke_devs = star.names[0], star.names[1:]
        spoke_keys = [pyvpn_status(n)["public_key"] for n in spoke_devs]

        def announce() -> None:
            """Each spoke sends a frame from its own MAC: the hub learns (or refreshes)
            it behind that spoke."""
            for spoke, dev, mac in zip(spokes, spoke_devs, SPOKE_MACS, strict=True):
                send_frames(spoke, dev, BROADCAST, marker(f"hello {mac}"), source=mac)

        def deliveries(destination: str, label: str, expected: list[int]) -> None:
            """Three frames from the hub to `destination` arrive at each spoke as
            often as `expected` says."""
            with captures(
                list(zip(spokes, spoke_devs, strict=True)),
                until=arrived(marker(label), expected),
                quiet=QUIET,
            ) as seen:
                send_frames(hub, hub_dev, destination, marker(label), count=3)
            assert [s.count(marker(label)) for s in seen] == expected, label

        with capture_frames(hub, hub_dev, until=lambda at: len(at) >= 3, quiet=QUIET) as at_hub:
            announce()
        assert sorted(f.source for f in at_hub) == SPOKE_MACS
        learned = macs_by_peer(hub_dev)
        assert [learned[k] for k in spoke_keys] == [[m] for m in SPOKE_MACS]
        # Known unicast reaches only its spoke; broadcast reaches them all.
        announce()  # fresh entries: each check outlasts a good part of MAC_AGEING
        deliveries(SPOKE_MACS[0], "unicast", [3, 0, 0])
        announce()
        deliveries(SPOKE_MACS[1], "unicast 2", [0, 3, 0])
        deliveries(BROADCAST, "broadcast", [3, 3, 3])
        # Ageing: silent for MAC_AGEING seconds, the entries go, and unicast floods.
        wait_until(lambda: not any(macs_by_peer(hub_dev).values()), "ageing", MAC_AGEING + 5, 0.1)
        deliveries(SPOKE_MACS[0], "aged unicast", [3, 3, 3])
        assert all(d.alive() for d in daemons)


@pytest.mark.netns
def test_a_spoke_cannot_take_the_mac_of_a_host_behind_another(tmp_path, datapath):
    """Spoke c forges frames from the MAC address of a host behind spoke b: the
    host behind b keeps getting its unicast, and c's forgeries are dropped and
    counted against c."""
    # Entries live for the whole test: a forgery is refused while fresh.
    with running_star(tmp_path, datapath, "hj", {"mac_ageing": 120}) as star:
        hub, spokes, names, daemons = star.hub, star.spokes, star.names, star.daemons
        hub_dev = names[0]
        key_b, key_c = (pyvpn_status(n)["public_key"] for n in names[1:3])
        victim = SPOKE_MACS[0]
        send_frames(spokes[0], names[1], BROADCAST, marker("b's host"), source=victim)
        wait_until(
            lambda: macs_by_peer(hub_dev)[key_b] == [victim], "the hub learning b's host", poll=0.1
        )
        # Until the hub has dropped all five, and QUIET for one let through.
        with capture_frames(
            hub, hub_dev, until=lambda _: bad_source(hub_dev)[key_c] >= 5, quiet=QUIET
        ) as at_hub:
            send_frames(spokes[1], names[2], BROADCAST, marker("forged"), source=victim,
                        count=5)  # fmt: skip
        assert not at_hub.count(marker("forged"))
        assert macs_by_peer(hub_dev)[key_b] == [victim] and not macs_by_peer(hub_dev)[key_c]
        assert bad_source(hub_dev)[key_c] >= 5
        assert bad_source(hub_dev)[key_b] == 0
        # The unicast for b's host still goes to b alone.
        for_b = marker("for b's host")
        with captures(
            list(zip(spokes, names[1:], strict=True)), until=arrived(for_b, [3, 0, 0]), quiet=QUIET
        ) as seen:
            send_frames(hub, hub_dev, victim, for_b, count=3)
        assert [s.count(for_b) for s in seen] == [3, 0, 0]
        assert "another peer's hosts hold" in daemons[0].output()
        assert all(d.alive() for d in daemons)


@pytest.mark.netns
def test_allowed_macs_bind_a_spokes_hosts_to_it(tmp_path, datapath):
    """The hub lists the MAC address of spoke b's host in b's allowed_macs: unicast
    to it goes to b before b ever sent a frame, b may send from no other address,
    and no other spoke may send from that one."""

    def bind(peers: list[dict[str, Any]]) -> None:
        peers[0]["allowed_macs"] = [SPOKE_MACS[0]]

    with running_star(tmp_path, datapath, "am", hub_peers=bind) as star:
        hub, spokes, names, daemons = star.hub, star.spokes, star.names, star.daemons
        hub_dev = names[0]
        key_b, key_c = (pyvpn_status(n)["public_key"] for n in names[1:3])

        def deliveries(label: str) -> list[int]:
            with captures(
                list(zip(spokes, names[1:], strict=True)),
                until=arrived(marker(label), [3, 0, 0]),
                quiet=QUIET,
            ) as seen:
                send_frames(hub, hub_dev, SPOKE_MACS[0], marker(label), count=3)
            return [s.count(marker(label)) for s in seen]

        def handled(at_hub: Capture) -> bool:
            """b's one listed frame arrived, and the hub dropped the five others."""
            drops = bad_source(hub_dev)
            return at_hub.count(marker("b listed")) >= 1 and drops[key_b] + drops[key_c] >= 5

        assert deliveries("before b spoke") == [3, 0, 0]
        with capture_frames(hub, hub_dev, until=handled, quiet=QUIET) as at_hub:
            send_frames(spokes[0], names[1], BROADCAST, marker("b unlisted"),
                        source=SPOKE_MACS[1], count=2)  # fmt: skip
            send_frames(spokes[1], names[2], BROADCAST, marker("c forging"),
                        source=SPOKE_MACS[0], count=3)  # fmt: skip
            send_frames(spokes[0], names[1], BROADCAST, marker("b listed"),
                        source=SPOKE_MACS[0], count=1)  # fmt: skip
        assert sorted({f.payload for f in at_hub}) == [marker("b listed")]
        assert bad_source(hub_dev)[key_b] == 2
        assert bad_source(hub_dev)[key_c] == 3
        by_key = {p["public_key"]: p for p in pyvpn_status(hub_dev)["peers"]}
        assert by_key[key_b]["allowed_macs"] == [SPOKE_MACS[0]]
        assert "allowed macs: " + SPOKE_MACS[0] in pyvpn("show", hub_dev).stdout
        assert deliveries("after c forged") == [3, 0, 0]
        assert all(d.alive() for d in daemons)


@pytest.mark.netns
def test_a_mac_dropped_from_allowed_macs_by_reload_is_free_at_once(tmp_path, datapath):
    """b's host moves behind c: the hub's operator drops its MAC address from b's
    allowed_macs with `pyvpn reload`, and c's frames from it arrive at once, and
    unicast to it follows them to c, not only after mac_ageing."""

    def bind(peers: list[dict[str, Any]]) -> None:
        peers[0]["allowed_macs"] = [SPOKE_MACS[0]]

    with running_star(tmp_path, datapath, "ub", {"mac_ageing": 120}, hub_peers=bind) as star:
        hub, spokes, names, daemons = star.hub, star.spokes, star.names, star.daemons
        hub_dev, moved = names[0], SPOKE_MACS[0]
        key_c = pyvpn_status(names[2])["public_key"]

        def from_c(label: str) -> list[bytes]:
            """What of three frames c sends from the moved address reaches the hub's
            device: until the hub has let all three through or dropped them."""
            refused = bad_source(hub_dev)[key_c]

            def handled(at_hub: Capture) -> bool:
                return at_hub.count(marker(label)) + bad_source(hub_dev)[key_c] - refused >= 3

            with capture_frames(hub, hub_dev, until=handled, quiet=QUIET) as at_hub:
                send_frames(spokes[1], names[2], BROADCAST, marker(label), source=moved,
                            count=3)  # fmt: skip
            return [f.payload for f in at_hub if f.payload == marker(label)]

        assert from_c("bound to b") == []  # refused while the address is b's
        path = tmp_path / f"{hub_dev}.toml"
        config = tomllib.loads(path.read_text())
        del config["peer"][0]["allowed_macs"]
        path.write_text(render_config(config["interface"], config["peer"]))
        assert pyvpn("reload", str(path)).returncode == 0
        assert from_c("moved to c") == [marker("moved to c")] * 3
        assert macs_by_peer(hub_dev)[key_c] == [moved]
        to_moved = marker("to the moved host")
        with captures(
            list(zip(spokes, names[1:], strict=True)),
            until=arrived(to_moved, [0, 3, 0]),
            quiet=QUIET,
        ) as seen:
            send_frames(hub, hub_dev, moved, to_moved, count=3)
        assert [s.count(to_moved) for s in seen] == [0, 3, 0]
        assert all(d.alive() for d in daemons)


@pytest.mark.netns
def test_a_bridged_hub_relays_between_spokes_never_back_to_the_sender(tmp_path, datapath):
    """Spokes of a hub whose device is in a bridge reach each other at L2: the hub's
    bridge port is in hairpin mode, so a frame from one spoke comes back to pyvpn,
    which sends it on to the others but never to the spoke it came from."""
    with running_star(tmp_path, datapath, "rl", bridged=True) as star:
        hub, spokes, names = star.hub, star.spokes, star.names
        assert "hairpin on" in hub.run("ip", "-d", "link", "show", names[0]).stdout

        def deliveries(sender: int, destination: str, label: str, expected: list[int]) -> None:
            """Three frames from spoke `sender` arrive at each spoke as often as
            `expected` says."""
            with captures(
                list(zip(spokes, names[1:], strict=True)),
                until=arrived(marker(label), expected),
                quiet=QUIET,
            ) as seen:
                send_frames(spokes[sender], names[sender + 1], destination, marker(label),
                            source=SPOKE_MACS[sender], count=3)  # fmt: skip
            assert [s.count(marker(label)) for s in seen] == expected, label

        # A broadcast reaches the other spokes, not its sender: a frame coming back
        # would teach the sender's own bridge that its hosts live behind the tunnel.
        deliveries(0, BROADCAST, "from b", [0, 3, 3])
        deliveries(1, BROADCAST, "from c", [3, 0, 3])
        # Both sources are now learned: unicast goes to its spoke alone.
        deliveries(0, SPOKE_MACS[1], "b to c", [0, 3, 0])
        deliveries(1, SPOKE_MACS[0], "c to b", [3, 0, 0])


# ---------------------------------------------------------------------------
# A tap end meeting a tun end


def test_mode_mismatch_is_reported_on_both_sides(bed, tmp_path, datapath):
    path_a, path_b = write_pair_configs(
        tmp_path, "tun", datapath,
        interface_b={"mode": "tap", "name": device_name("pvtap", "b")},
        peer_a={"persistent_keepalive": 25},  # a handshakes at once
        peer_b={"allowed_ips": None},
    )  # fmt: skip
    key_of_b = tomllib.loads(path_a.read_text())["peer"][0]["public_key"]
    key_of_a = tomllib.loads(path_b.read_text())["peer"][0]["public_key"]
    with start(bed.b, path_b, datapath) as b, start(bed.a, path_a, datapath) as a:
        expected = {
            a: f"peer {key_of_b[:8]}… is configured for tap mode but this interface is tun",
            b: f"peer {key_of_a[:8]}… is configured for tun mode but this interface is tap",
        }
        wait_until(
            lambda: all(line in d.output() for d, line in expected.items()), "report", poll=0.1
        )
        for daemon, line in expected.items():
            # One clear line, not one per dropped packet.
            assert daemon.output().count(line) == 1, daemon.output()
            assert pyvpn_status(daemon.name)["drops"]["mode_mismatch"] >= 1


# ---------------------------------------------------------------------------
# configs/


def test_example_tap_configs_are_a_matching_bridged_pair(tmp_path):
    # Installed as a key file should be (a checkout gives every file 0644,
    # which rightly earns the world-accessible warning).
    for side in "ab":
        shutil.copy(ROOT / "configs" / f"tap-{side}.toml", tmp_path)
        (tmp_path / f"tap-{side}.toml").chmod(0o600)
    a, b = (load(str(tmp_path / f"tap-{side}.toml")) for side in "ab")
    for this, other in ((a, b), (b, a)):
        assert this.interface.mode == "tap" and this.interface.bridge == "br0"
        assert this.peers[0].public_key == keys.public_key(other.interface.private_key)
        assert not this.warnings
