"""Broadcast and multicast chatter: N hosts on each LAN doing what idle hosts do,
and what of it crosses the tunnel.

Every host, once a second (ROUNDS_PER_S), asks for its neighbour by ARP and by
IPv6 neighbour discovery, announces its name over mDNS to 224.0.0.251 and
ff02::fb, and broadcasts a DHCP DISCOVER: five frames a second
(frames.host_chatter). On a tap bridge all of it is flooded through the tunnel
to the other LAN; a tun gateway routes none of it. The figures are the frames
pyvpn delivered on the far side (both directions), the bytes the underlay
carried for them (both gateways' veths), and the CPU the two tunnel processes
used meanwhile.
"""

from __future__ import annotations

import time

from ..measure import CpuMeter
from ..report import Figure
from . import generator
from .lan import Sites, counters, two_lans_setup
from .run import Run, Scenario, Settings

ROUNDS_PER_S = 1.0
FRAMES_PER_ROUND = 5


def figures(settings: Settings) -> list[Figure]:
    out = []
    for n in settings.hosts:
        out += [
            Figure(f"chatter_{n}_hosts_pps", f"{n} hosts: across the tunnel", "frames/s", 1.0, 1),
            Figure(f"chatter_{n}_hosts_bytes_per_s", f"{n} hosts: underlay", "kB/s", 1e3, 2),
            Figure(
                f"chatter_{n}_hosts_cpu_percent", f"{n} hosts: tunnel CPU", "% of a core", 1.0, 2
            ),
        ]
    return out


def measure(run: Run, sites: Sites) -> None:
    for n in run.settings.hosts:
        run.attempt(f"chatter, {n} hosts a side", lambda n=n: _chatter(run, sites, n))


def _chatter(run: Run, sites: Sites, n: int) -> None:
    seconds = run.settings.seconds
    meter = CpuMeter(sites.pids)
    # Frames pyvpn delivered into the far side's device (the device's rx), and
    # what the underlay carried for them (outer bytes, exact; the veth counts a
    # UDP GSO batch as one packet, so its packets are not the frames).
    delivered, carried = counters(sites.tunnels, "rx"), counters(sites.underlay)
    with meter:
        procs = [
            generator.start(
                lan.hosts,
                "chatter",
                lan.dev,
                side,
                n,
                seconds,
                lan.subnet4,
                lan.subnet6,
                ROUNDS_PER_S,
            )
            for side, lan in enumerate(sites.lans)
        ]
        offered = [generator.outcome(p, seconds + 30) for p in procs]
        time.sleep(0.2)  # the last frames still crossing
    # Per second of chatter: the generators' window, not their start-up around it.
    elapsed = seconds
    delivered = counters(sites.tunnels, "rx") - delivered
    carried = counters(sites.underlay) - carried
    figures, details = run.result.figures, run.result.details
    figures[f"chatter_{n}_hosts_pps"] = delivered.packets / elapsed
    figures[f"chatter_{n}_hosts_bytes_per_s"] = carried.bytes / elapsed
    figures[f"chatter_{n}_hosts_cpu_percent"] = 100 * meter.seconds / elapsed
    details[f"chatter_{n}_hosts"] = {
        "offered_frames": sum(o["sent"] for o in offered),
        "offered_bytes": sum(o["bytes"] for o in offered),
        "delivered_frames": delivered.packets,
        "delivered_bytes": delivered.bytes,
        "underlay_packets": carried.packets,
        "underlay_bytes": carried.bytes,
        "seconds": seconds,
    }


SCENARIO = Scenario(
    "chatter",
    "Broadcast and multicast chatter",
    f"N hosts a side (--hosts) each send ARP, neighbour discovery, mDNS (v4 and v6) "
    f"and DHCP DISCOVER, {FRAMES_PER_ROUND * ROUNDS_PER_S:g} frames a second a host; "
    "the figures are the frames delivered across the tunnel (both directions), the "
    "bytes the underlay carried for them, and the CPU of both tunnel processes meanwhile.",
    figures,
    two_lans_setup,
    measure,
)
