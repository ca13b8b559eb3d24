"""`pyvpn demo`: two namespaces linked by a pyvpn tunnel, in tun and in tap mode.

For each mode: fresh keys and configs, `pyvpn up` in both namespaces, ping and
iperf3 through the tunnel, tunnel down. Then a summary next to the raw veth
figures. Everything is torn down on success, failure and Ctrl-C alike.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from tunnel.host.interrupt import sigterm_as_interrupt

from . import measure
from .testbed import (
    INNER_B,
    CommandError,
    Testbed,
    TunnelStartError,
    first_line,
    host_problem,
    pyvpn_pair,
    pyvpn_status,
    wait_reachable,
)

DEFAULT_TIME = 5.0
MODES = ("tun", "tap")
PING_COUNT = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--time",
        type=float,
        default=DEFAULT_TIME,
        metavar="SECONDS",
        help=f"seconds of iperf3 per mode (default {DEFAULT_TIME:g})",
    )
    parser.add_argument(
        "--mode",
        choices=(*MODES, "both"),
        default="both",
        help="which tunnel mode to show (default both)",
    )
    parser.add_argument(
        "--datapath",
        choices=("auto", "native", "python"),
        default="auto",
        help="pyvpn data plane (default auto: native when built)",
    )


@dataclass(frozen=True)
class Row:
    what: str
    data_plane: str
    rtt_ms: float | None
    bits_per_second: float


def run(args: argparse.Namespace) -> int:
    console, err = Console(), Console(stderr=True)
    problem = host_problem()
    if problem:
        err.print(f"pyvpn demo: {problem}", highlight=False)
        return 1
    modes = MODES if args.mode == "both" else (args.mode,)
    try:
        with sigterm_as_interrupt():
            rows = demo(console, modes, args.time, args.datapath)
    except KeyboardInterrupt:
        err.print("pyvpn demo: interrupted; namespaces and tunnels torn down")
        return 130
    except (CommandError, TunnelStartError, measure.MeasurementError, TimeoutError, OSError) as exc:
        err.print(f"pyvpn demo: {first_line(exc)}", highlight=False)
        return 1
    summary(console, rows)
    return 0


def demo(console: Console, modes: tuple[str, ...], seconds: float, datapath: str) -> list[Row]:
    say = console.print
    rows = []
    with Testbed() as tb, tempfile.TemporaryDirectory(prefix="pyvpn-demo-") as tmp:
        say(
            f"Namespaces [bold]{tb.a.name}[/bold] ({tb.a_addr}) and [bold]{tb.b.name}[/bold] "
            f"({tb.b_addr}) joined by a veth pair.",
            highlight=False,
        )
        rows.append(measure_path(console, tb, "raw veth, no tunnel", "-", tb.b_addr, seconds))
        for mode in modes:
            say(f"\n[bold]{mode}[/bold]: starting `pyvpn up` in both namespaces ...")
            with pyvpn_pair(tb, tmp, mode, datapath) as (peer_a, _):
                wait_reachable(tb.a, INNER_B)
                plane = pyvpn_status(peer_a.name).get("datapath", datapath)
                say(f"  {peer_a.name} up ({plane} data plane); 10.10.0.1 -> {INNER_B}")
                rows.append(measure_path(console, tb, f"pyvpn {mode}", plane, INNER_B, seconds))
            say(f"  {mode} tunnel stopped")
    return rows


def measure_path(
    console: Console, tb: Testbed, what: str, plane: str, addr: str, seconds: float
) -> Row:
    stats = measure.ping(tb.a, addr, PING_COUNT)
    rtt = stats.median_ms
    rtt_text = f"{rtt:.3f} ms" if rtt is not None else "no reply"
    console.print(f"  {what}: ping {addr}: median RTT {rtt_text}, loss {stats.loss:.0%}")
    tcp = measure.iperf_tcp(tb.a, tb.b, addr, seconds)
    console.print(
        f"  {what}: iperf3 {seconds:g} s, TCP {tcp.congestion}: "
        f"{tcp.bits_per_second / 1e9:.2f} Gbit/s"
    )
    return Row(what, plane, rtt, tcp.bits_per_second)


def summary(console: Console, rows: list[Row]) -> None:
    table = Table(title="\npyvpn demo", title_justify="left")
    for column, justify in (
        ("path", "left"),
        ("data plane", "left"),
        ("RTT median", "right"),
        ("TCP throughput", "right"),
        ("of raw veth", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    ceiling = rows[0].bits_per_second if rows else 0.0
    for row in rows[1:] + rows[:1]:  # the reference last, under the tunnels
        table.add_row(
            row.what,
            row.data_plane,
            f"{row.rtt_ms:.3f} ms" if row.rtt_ms is not None else "-",
            f"{row.bits_per_second / 1e9:.2f} Gbit/s",
            f"{row.bits_per_second / ceiling:.1%}" if ceiling else "-",
        )
    console.print(table)
    console.print(
        f"TCP congestion control: {measure.host_congestion()}, the host's default. It moves "
        "raw veth's figure, and so every ratio, far more than a tunnel's (docs/benchmark.md).",
        highlight=False,
    )
