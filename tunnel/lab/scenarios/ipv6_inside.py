"""IPv6 inside: bulk and RTT with IPv6 addresses inside the tunnel, beside the
same over IPv4 on the same network, for both modes: from the LAN host behind
gateway a to the one behind gateway b (over the IPv4 underlay the other figures
use). On tap the hosts share one segment and IPv6 neighbour discovery crosses
the tunnel; on tun the gateways route both families."""

from __future__ import annotations

from ..measure import CpuMeter, iperf_tcp, ping
from ..report import Figure
from ..testbed import wait_reachable
from .lan import TINC_FULL_SIZE, Sites, two_lans_setup
from .run import Run, Scenario, Settings

PING_INTERVAL = 0.2
FAMILIES = ("v4", "v6")


def figures(settings: Settings) -> list[Figure]:
    out = []
    for family in FAMILIES:
        out += [
            Figure(f"tcp_{family}_bps", f"TCP 1 stream, IP{family}", "Gbit/s", 1e9, 2),
            Figure(f"rtt_{family}_median_ms", f"RTT median, IP{family}", "ms", 1.0, 3),
            Figure(f"cpu_{family}_s_per_gbit", f"CPU, IP{family}", "s/Gbit", 1.0, 2),
        ]
    return out


def measure(run: Run, sites: Sites) -> None:
    a, b = sites.lans
    for family, addr in (("v4", b.host4), ("v6", b.host6)):
        wait_reachable(a.hosts, addr)
        run.attempt(f"ping, IP{family}", lambda f=family, d=addr: _ping(run, sites, f, d))
        run.attempt(f"TCP, IP{family}", lambda f=family, d=addr: _tcp(run, sites, f, d))


def _ping(run: Run, sites: Sites, family: str, addr: str) -> None:
    count = max(10, round(run.settings.seconds / PING_INTERVAL))
    stats = ping(sites.lans[0].hosts, addr, count, PING_INTERVAL)
    run.result.figures[f"rtt_{family}_median_ms"] = stats.median_ms
    run.result.details[f"ping_{family}_loss"] = stats.loss


def _tcp(run: Run, sites: Sites, family: str, addr: str) -> None:
    a, b = sites.lans
    with CpuMeter(sites.pids) as meter:
        tcp = iperf_tcp(a.hosts, b.hosts, addr, run.settings.seconds)
    run.result.figures[f"tcp_{family}_bps"] = tcp.bits_per_second
    if tcp.bytes:
        run.result.figures[f"cpu_{family}_s_per_gbit"] = meter.seconds / (tcp.bytes * 8 / 1e9)


SCENARIO = Scenario(
    "ipv6",
    "IPv6 inside",
    "From the LAN host behind gateway a to the one behind gateway b: ping (median RTT) "
    "and one iperf3 TCP stream (throughput, and CPU per gigabit of both tunnel processes) "
    "to its IPv4 address, then to its IPv6 address.",
    figures,
    two_lans_setup,
    measure,
    not_run=TINC_FULL_SIZE,
)
