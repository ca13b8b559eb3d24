"""Three or more peers: what one packet from the hub costs when it goes to every
spoke.

A hub with --peers spokes, each over a veth of its own. The hub sends, for --time
seconds each, packets of PACKET bytes at RATE a second into its device:
broadcast, unicast to an address nobody has, and unicast to a spoke. tap floods
the first two to every spoke (broadcast and unknown unicast go to every peer)
and sends the third to the spoke its MAC was learned behind. tun has no
broadcast: the subnet broadcast and the unknown address match no peer's
allowed_ips and are dropped, and the unicast goes to its one peer. The figures
are the bytes the hub put on its underlay veths per byte it sent into the
tunnel, and the hub's tunnel CPU per gigabit sent.
"""

from __future__ import annotations

import ipaddress
import json

from ..measure import CpuMeter, MeasurementError
from ..report import Figure
from . import generator
from .lan import HUB_SUBNET, Star, counters, star_setup
from .run import Run, Scenario, Settings

PACKET = 1000  # bytes the hub sends into its device per packet: IP packet (tun), frame (tap)
RATE = 2000  # packets a second
UNKNOWN_MAC = "02:00:00:00:ee:01"
UNKNOWN_ADDR = str(ipaddress.ip_network(HUB_SUBNET)[250])
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
DISCARD_PORT = 9
KINDS = ("broadcast", "unknown_unicast", "unicast")
LABELS = {"broadcast": "broadcast", "unknown_unicast": "unknown unicast", "unicast": "unicast"}


def figures(settings: Settings) -> list[Figure]:
    out = []
    for kind in KINDS:
        out += [
            Figure(
                f"{kind}_underlay_bytes_per_byte",
                f"{LABELS[kind]}: underlay",
                "B per B sent",
                1.0,
                2,
            ),
            Figure(f"{kind}_hub_cpu_s_per_gbit", f"{LABELS[kind]}: hub CPU", "s/Gbit", 1.0, 2),
        ]
    return out


def measure(run: Run, hub: Star) -> None:
    run.result.details["spokes"] = len(hub.spokes)
    for kind in KINDS:
        run.attempt(LABELS[kind], lambda kind=kind: _send(run, hub, kind))


def _mac(hub: Star, spoke: int) -> str:
    ns, dev = hub.spokes[spoke], hub.spoke_devs[spoke]
    return str(json.loads(ns.run("ip", "-j", "link", "show", dev).stdout)[0]["address"])


def _traffic(run: Run, hub: Star, kind: str) -> tuple[str, list[object], int]:
    """The generator mode and arguments for `kind`, and the inner bytes per packet."""
    seconds = run.settings.seconds
    if hub.mode == "tap":
        if kind == "unicast":
            # The spoke speaks first, so the hub has learned its address.
            generator.generate(
                hub.spokes[0], "frames", hub.spoke_devs[0], BROADCAST_MAC, 64, 20, 0.2
            )
            dst = _mac(hub, 0)
        else:
            dst = BROADCAST_MAC if kind == "broadcast" else UNKNOWN_MAC
        return "frames", [hub.hub_dev, dst, PACKET, RATE, seconds], PACKET
    broadcast = str(ipaddress.ip_network(HUB_SUBNET).broadcast_address)
    dst = {"broadcast": broadcast, "unknown_unicast": UNKNOWN_ADDR, "unicast": hub.spoke_addrs[0]}
    payload = PACKET - 28  # IPv4 and UDP headers
    return "udp", [dst[kind], DISCARD_PORT, payload, RATE, seconds], PACKET


def _send(run: Run, hub: Star, kind: str) -> None:
    mode, args, per_packet = _traffic(run, hub, kind)
    meter = CpuMeter([hub.hub_pid])
    before = counters(hub.underlay)
    with meter:
        sent = generator.generate(hub.hub, mode, *args, timeout=run.settings.seconds + 30)
    crossed = counters(hub.underlay) - before
    if not sent["sent"]:
        raise MeasurementError(f"no {LABELS[kind]} packet could be sent")
    inner = sent["sent"] * per_packet
    run.result.figures[f"{kind}_underlay_bytes_per_byte"] = crossed.bytes / inner
    run.result.figures[f"{kind}_hub_cpu_s_per_gbit"] = meter.seconds / (inner * 8 / 1e9)
    run.result.details[kind] = {
        "packets_sent": sent["sent"],
        "inner_bytes": inner,
        "underlay_packets": crossed.packets,
        "underlay_bytes": crossed.bytes,
    }


SCENARIO = Scenario(
    "flooding",
    "Three or more peers: flooding",
    f"A hub with --peers spokes sends {RATE} packets of {PACKET} bytes a second for "
    "--time seconds: broadcast, unicast to an unknown address, unicast to a spoke. "
    "The figures: bytes on the hub's underlay per byte sent, and the hub's tunnel CPU "
    "per gigabit sent (tap floods the first two to every spoke; tun drops them, as "
    "they match no peer's allowed_ips).",
    figures,
    star_setup,
    measure,
    namespaces=lambda settings: 1 + settings.peers,
)
