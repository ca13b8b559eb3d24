"""Broadcast and multicast chatter: N hosts on each LAN doing what idle hosts do,
and what of it crosses the tunnel.

Every host, once a second (ROUNDS_PER_S), asks for its neighbour by ARP and by
IPv6 neighbour discovery, announces its name over mDNS to 224.0.0.251 and
ff02::fb, and broadcasts a DHCP DISCOVER: five frames a second
(frames.host_chatter). On a tap bridge all of it is flooded through the tunnel
to the other LAN; a tun gateway routes none of it. The figures are what the
underlay carried (both gateways' veths, both directions) and the CPU the two
tunnel processes used meanwhile.
"""

from __future__ import annotations

import time

from ..measure import CpuMeter
from ..report import Figure
from . import generator
from .lan import Sites, two_lans_setup, tx_counters
from .run import Run, Scenario, Settings

ROUNDS_PER_S = 1.0
FRAMES_PER_ROUND = 5


def figures(settings: Settings) -> list[Figure]:
    out = []
    for n in settings.hosts:
        out += [
            Figure(f"chatter_{n}_hosts_pps", f"{n} hosts: underlay", "packets/s", 1.0, 1),
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
    before = tx_counters(sites.underlay)
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
    crossed = tx_counters(sites.underlay) - before
    figures, details = run.result.figures, run.result.details
    figures[f"chatter_{n}_hosts_pps"] = crossed.packets / elapsed
    figures[f"chatter_{n}_hosts_bytes_per_s"] = crossed.bytes / elapsed
    figures[f"chatter_{n}_hosts_cpu_percent"] = 100 * meter.seconds / elapsed
    details[f"chatter_{n}_hosts"] = {
        "offered_frames": sum(o["sent"] for o in offered),
        "offered_bytes": sum(o["bytes"] for o in offered),
        "underlay_packets": crossed.packets,
        "underlay_bytes": crossed.bytes,
        "seconds": seconds,
    }


SCENARIO = Scenario(
    "chatter",
    "Broadcast and multicast chatter",
    f"N hosts a side (--hosts) each send ARP, neighbour discovery, mDNS (v4 and v6) "
    f"and DHCP DISCOVER, {FRAMES_PER_ROUND * ROUNDS_PER_S:g} frames a second a host; "
    "the figures are what crossed the underlay (both directions) and the CPU of both "
    "tunnel processes meanwhile.",
    figures,
    two_lans_setup,
    measure,
)
