"""IPv6 inside: the bench's bulk and RTT figures with IPv6 addresses inside the
tunnel, beside the same over IPv4 in the same run, for both modes (over the
IPv4 underlay the other figures use)."""

from __future__ import annotations

import contextlib

from ..measure import CpuMeter, iperf_tcp, ping
from ..report import Figure
from ..testbed import INNER_B, INNER_B6, wait_reachable, write_pair_configs
from .lan import DATAPATH, start_native
from .run import Run, Scenario, Settings

PING_INTERVAL = 0.2
FAMILIES = (("v4", INNER_B), ("v6", INNER_B6))


def figures(settings: Settings) -> list[Figure]:
    out = []
    for family, _ in FAMILIES:
        out += [
            Figure(f"tcp_{family}_bps", f"TCP 1 stream, IP{family}", "Gbit/s", 1e9, 2),
            Figure(f"rtt_{family}_median_ms", f"RTT median, IP{family}", "ms", 1.0, 3),
            Figure(f"cpu_{family}_s_per_gbit", f"CPU, IP{family}", "s/Gbit", 1.0, 2),
        ]
    return out


def measure(run: Run) -> None:
    tb = run.tb
    paths = write_pair_configs(run.workdir, run.mode, DATAPATH, mtu=run.settings.mtu)
    with contextlib.ExitStack() as stack:
        daemons = [
            stack.enter_context(start_native(ns, p))
            for ns, p in zip((tb.a, tb.b), paths, strict=True)
        ]
        for _, addr in FAMILIES:
            wait_reachable(tb.a, addr)
        for family, addr in FAMILIES:
            run.attempt(f"ping, IP{family}", lambda f=family, a=addr: _ping(run, f, a))
            run.attempt(
                f"TCP, IP{family}",
                lambda f=family, a=addr: _tcp(run, [d.pid for d in daemons], f, a),
            )


def _ping(run: Run, family: str, addr: str) -> None:
    count = max(10, round(run.settings.seconds / PING_INTERVAL))
    stats = ping(run.tb.a, addr, count, PING_INTERVAL)
    run.result.figures[f"rtt_{family}_median_ms"] = stats.median_ms
    run.result.details[f"ping_{family}_loss"] = stats.loss


def _tcp(run: Run, pids: list[int], family: str, addr: str) -> None:
    with CpuMeter(pids) as meter:
        tcp = iperf_tcp(run.tb.a, run.tb.b, addr, run.settings.seconds)
    run.result.figures[f"tcp_{family}_bps"] = tcp.bits_per_second
    if tcp.bytes:
        run.result.figures[f"cpu_{family}_s_per_gbit"] = meter.seconds / (tcp.bytes * 8 / 1e9)


SCENARIO = Scenario(
    "ipv6",
    "IPv6 inside",
    "The tunnel pair of the main bench with IPv4 and IPv6 addresses inside: ping "
    "(median RTT) and one iperf3 TCP stream (throughput, CPU per gigabit of both tunnel "
    "processes) to the far end's IPv4 address, then to its IPv6 address.",
    figures,
    measure,
)
