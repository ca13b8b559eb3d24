"""First-packet latency: how long the first reply from a host not seen before
takes, against the next reply.

Before each trial every neighbour cache on the path is flushed (both LAN hosts,
both gateways) and, in tap mode, both bridges' learned MAC addresses. Then the
LAN host behind gateway a pings the one behind gateway b twice. On tap the first
echo waits for an ARP request to cross the tunnel, be flooded on the far LAN and
its reply to come back; on tun the host resolves only its own gateway, and the
far gateway its own LAN host, each on its own side. pyvpn's own MAC table is not
flushed: with one peer, flooded and learned frames take the same way.
"""

from __future__ import annotations

import statistics

from ..measure import MeasurementError, ping
from ..report import Figure
from .lan import BRIDGE, Sites, two_lans_setup
from .run import Run, Scenario

FIGURES = [
    Figure("first_reply_median_ms", "first reply, median", "ms", 1.0, 3),
    Figure("first_reply_min_ms", "first reply, lowest", "ms", 1.0, 3),
    Figure("first_reply_max_ms", "first reply, highest", "ms", 1.0, 3),
    Figure("next_reply_median_ms", "next reply, median", "ms", 1.0, 3),
]


def forget_neighbours(sites: Sites) -> None:
    for lan in sites.lans:
        for ns in (lan.hosts, lan.gateway):
            ns.run("ip", "-4", "neigh", "flush", "all")
            ns.run("ip", "-6", "neigh", "flush", "all")
        if sites.mode == "tap":
            lan.gateway.run("ip", "link", "set", "dev", BRIDGE, "type", "bridge", "fdb_flush")


def measure(run: Run, sites: Sites) -> None:
    a, b = sites.lans
    first, then = [], []
    for n in range(1, run.settings.trials + 1):
        run.display.step(f"trial {n} of {run.settings.trials}")
        forget_neighbours(sites)
        stats = ping(a.hosts, b.host4, count=2, interval=0.2)
        if len(stats.rtts_ms) == 2:  # a lost echo gives no first-reply time
            first.append(stats.rtts_ms[0])
            then.append(stats.rtts_ms[1])
    run.result.details["first_reply_ms"] = first
    run.result.details["next_reply_ms"] = then
    run.result.details["trials_without_both_replies"] = run.settings.trials - len(first)
    if not first:
        raise MeasurementError("no trial got both replies")
    figures = run.result.figures
    figures["first_reply_median_ms"] = statistics.median(first)
    figures["first_reply_min_ms"], figures["first_reply_max_ms"] = min(first), max(first)
    figures["next_reply_median_ms"] = statistics.median(then)


SCENARIO = Scenario(
    "first-packet",
    "First-packet latency",
    "--trials times: flush every neighbour cache on the path (and the tap bridges' "
    "MAC tables), then ping from a LAN host behind gateway a to one behind gateway b "
    "twice; the first reply includes address resolution (ARP across the tunnel on tap, "
    "on each LAN on tun), the next does not.",
    lambda settings: FIGURES,
    two_lans_setup,
    measure,
)
