"""`pyvpn bench`: raw veth, pyvpn (tun/tap, each data plane), wireguard-go and OpenVPN side by side.

Two namespaces joined by a veth; for each contender a tunnel between them and the
same measurements through it (measure.py). Contenders run one after another,
never at once, so they do not share the machine's two cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tunnel.host.interrupt import sigterm_as_interrupt
from tunnel.protocol.constants import DEFAULT_MTU, MAX_CRYPTO_WORKERS

from . import fleetbench, hub, measure, pipeline
from .contenders import (
    CONTENDERS,
    NAMES,
    Contender,
    Endpoints,
    Skip,
    header_overhead,
    with_crypto_workers,
)
from .measure import EXPECTED_ERRORS
from .report import (
    CPU_KEYS,
    Result,
    combine,
    render_table,
    to_json,
    write_chart,
    write_json,
    write_report,
)
from .scenarios import options as scenario_options
from .scenarios.output import Found
from .scenarios.run import run_scenarios
from .testbed import (
    WIREGUARD_GO_ENV,
    Testbed,
    first_line,
    host_problem,
)

DEFAULT_TIME = 5.0
PING_INTERVAL = 0.2

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help=f"comma-separated contenders to run (default: all): {', '.join(NAMES)}",
    )
    parser.add_argument(
        "--time",
        type=float,
        default=DEFAULT_TIME,
        metavar="SECONDS",
        help=f"seconds per iperf3 test (default {DEFAULT_TIME:g})",
    )
    parser.add_argument(
        "--mtu",
        type=int,
        default=DEFAULT_MTU,
        help=f"inner MTU of every tunnel, tun and tap alike (default {DEFAULT_MTU})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="measure every contender N times, in turns, and show each figure's median (default 1)",
    )
    parser.add_argument(
        "--workers",
        metavar="COUNTS",
        help="comma-separated counts of crypto workers beside the native plane's I/O "
        "worker, e.g. 0,1,2: each native pyvpn contender runs once per count, in turns "
        "in every round (default: once, with the config's auto)",
    )
    parser.add_argument(
        "--congestion",
        metavar="NAME",
        help="TCP congestion control for the TCP tests, e.g. cubic or bbr (default: the "
        "host's); it moves raw veth's ceiling far more than any tunnel's",
    )
    scenario_options.add_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    parser.add_argument("--chart", metavar="FILE.png", help="write a bar chart to FILE.png")
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write DIR/report.md (the tables with each figure's spread, the chart, the "
        "machine and every version) beside DIR/bench.json and DIR/bench.png",
    )
    parser.add_argument(
        "--wireguard-go",
        metavar="PATH",
        help=f"the wireguard-go binary to measure (default: ${WIREGUARD_GO_ENV}, else the "
        "venv's contenders/ that scripts/setup fills, else wireguard-go on PATH); OpenVPN "
        "and iperf3 come from PATH",
    )
    hub.add_arguments(parser)
    pipeline.add_arguments(parser)
    fleetbench.add_arguments(parser)


def crypto_worker_counts(text: str | None) -> list[int]:
    """--workers as counts; ValueError says what is wrong."""
    if text is None:
        return []
    counts = [n.strip() for n in text.split(",")]
    if not all(n.isdigit() and int(n) <= MAX_CRYPTO_WORKERS for n in counts):
        raise ValueError(f"--workers takes counts from 0 to {MAX_CRYPTO_WORKERS}, like 0,1,2")
    return [int(n) for n in counts]


def selected(only: str | None) -> list[Contender]:
    """The contenders `--only` names; "none" for none (a run of scenarios alone)."""
    if not only:
        return list(CONTENDERS)
    if only.strip() == "none":
        return []
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown contender {', '.join(unknown)}; known: {', '.join(NAMES)}")
    return [c for c in CONTENDERS if c.name in wanted]


def run(args: argparse.Namespace) -> int:
    if args.wireguard_go:
        os.environ[WIREGUARD_GO_ENV] = args.wireguard_go  # for the hub's wireguard-go too
    if args.hub is not None:
        return hub.run(args)
    if args.fleet is not None:
        return fleetbench.run(args)
    out, err = Console(), Console(stderr=True)
    if not out.is_terminal:
        out = Console(width=200)  # a file or pipe gets the whole table, not 80 columns
    try:
        workers = crypto_worker_counts(args.workers)
        if args.pipeline:
            if not 576 <= args.mtu <= 9000 or not 1 <= args.rounds <= 100:
                raise ValueError("--mtu must be between 576 and 9000, --rounds 1 to 100")
            return pipeline.run(args, workers)
        contenders = with_crypto_workers(selected(args.only), workers)
        if args.time <= 0 or not 576 <= args.mtu <= 9000 or not 1 <= args.rounds <= 100:
            raise ValueError(
                "--time must be positive, --mtu between 576 and 9000, --rounds between 1 and 100"
            )
        if args.congestion is not None:
            measure.check_congestion(args.congestion)
        chosen, scenario_settings = scenario_options.from_arguments(args)
        if not contenders and not chosen:
            raise ValueError("--only none runs no contender: name --scenarios to run")
    except ValueError as exc:
        err.print(f"pyvpn bench: {exc}", highlight=False, soft_wrap=True)
        return 2
    problem = host_problem()
    if problem:
        err.print(f"pyvpn bench: {problem}", highlight=False, soft_wrap=True)
        return 1
    try:
        with sigterm_as_interrupt():
            results = (
                bench(contenders, args.time, args.mtu, Display(err), args.rounds, args.congestion)
                if contenders
                else []
            )
            found = None
            if chosen:
                with Display(err) as display:
                    done = run_scenarios(chosen, scenario_settings, display, args.rounds)
                found = Found(chosen, done, scenario_settings)
    except KeyboardInterrupt:
        err.print("pyvpn bench: interrupted; everything it set up is torn down")
        return 130
    except (*EXPECTED_ERRORS, OSError) as exc:
        err.print(f"pyvpn bench: {first_line(exc)}", highlight=False, soft_wrap=True)
        return 1
    congestion = reported_congestion(results) or args.congestion or measure.host_congestion()
    if results:
        render_table(results, out)
        tun, tap = header_overhead("tun"), header_overhead("tap")
        out.print(
            f"Header overhead per inner packet over an IPv4 underlay: tun {tun} B, tap {tap} B "
            f"(IP + UDP + 32 B WireGuard; tap adds the 14 B Ethernet header; +20 B over IPv6). "
            f"Inner MTU {args.mtu} for every tunnel; {args.time:g} s per iperf3 test. "
            "CPU: seconds used by the tunnel processes per gigabit moved in the 1-stream test, "
            "both sides and each (the sender's encrypts, the receiver's decrypts). "
            f"TCP congestion control: {congestion}"
            + (" (--congestion)." if args.congestion else " (the host's default).")
            + (f" Each figure is the median of {args.rounds} rounds." if args.rounds > 1 else ""),
            highlight=False,
        )
    if found:
        found.render(out)
    settings: dict[str, Any] = {
        "time_s": args.time,
        "mtu": args.mtu,
        "rounds": args.rounds,
        "only": [c.name for c in contenders],
        "tcp_congestion": congestion,
        **(found.json_settings() if found else {}),
    }
    if args.json:
        write_json(args.json, to_json(results, settings, found.json() if found else None))
        out.print(f"JSON: {args.json}", highlight=False)
    if args.chart:
        if results:
            write_chart(args.chart, results)
            out.print(f"chart: {args.chart}", highlight=False)
        if found:
            out.print(f"chart: {found.chart_beside(args.chart)}", highlight=False)
    if args.report:
        command = (
            " ".join(["pyvpn", "bench", *sys.argv[2:]]) if len(sys.argv) > 1 else "pyvpn bench"
        )
        sections = found.report_section(args.report) if found else []
        scenario_json = found.json() if found else None
        path = write_report(args.report, results, settings, command, scenario_json, sections)
        out.print(f"report: {path}", highlight=False)
    return 0


def reported_congestion(results: list[Result]) -> str | None:
    """The TCP congestion control as iperf3 reported it (a round's, with --rounds):
    new namespaces take the initial namespace's default, not this process's."""
    for result in results:
        for details in (result.details, *(r["details"] for r in result.details.get("rounds", []))):
            if "tcp_congestion" in details:
                return str(details["tcp_congestion"])
    return None


class Display:
    """Live progress: which contender, which test, time elapsed (plain lines when piped)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(finished_text="•"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task: int | None = None
        self.name = ""

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def begin(self, name: str, first: str = "starting tunnel") -> None:
        self.name = name
        self.task = self.progress.add_task(name)
        self.step(first)

    def step(self, test: str) -> None:
        self.progress.update(self.task, description=f"[bold]{self.name}[/bold]: {test}")
        if not self.console.is_terminal:
            self.console.print(f"bench: {self.name}: {test}", highlight=False)

    def end(self, result: Result) -> None:
        self.progress.update(self.task, description=f"{self.name}: {result.status}", total=1)
        self.progress.update(self.task, completed=1)


def bench(
    contenders: list[Contender],
    seconds: float,
    mtu: int,
    display: Display,
    rounds: int = 1,
    congestion: str | None = None,
) -> list[Result]:
    """Measure every contender in turn over one testbed, `rounds` times over, so
    that slow drifts of the machine reach every contender alike (a contender
    skipped for a missing tool is not retried); torn down whatever happens."""
    runs: dict[str, list[Result]] = {c.name: [] for c in contenders}
    with Testbed() as tb, tempfile.TemporaryDirectory(prefix="pyvpn-bench-") as tmp, display:
        for n in range(1, rounds + 1):
            for contender in contenders:
                done = runs[contender.name]
                if done and done[0].status == "skipped":
                    continue
                display.begin(contender.name if rounds == 1 else f"{contender.name} ({n}/{rounds})")
                workdir = Path(tmp) / f"{contender.name}-{n}"
                workdir.mkdir()
                result = measure_contender(
                    contender, tb, workdir, seconds, mtu, display, congestion
                )
                display.end(result)
                done.append(result)
    return [combine(runs[c.name]) for c in contenders]


def measure_contender(
    contender: Contender,
    tb: Testbed,
    workdir: Path,
    seconds: float,
    mtu: int,
    display: Display,
    congestion: str | None = None,
) -> Result:
    result = Result(contender.name, contender.family, contender.mode, contender.overhead_bytes())
    missing = contender.missing_tool()
    if missing:
        result.status, result.notes = "skipped", [missing]
        return result
    try:
        result.version = contender.version()
    except (OSError, ImportError, subprocess.SubprocessError) as exc:
        result.notes.append(f"version unknown: {first_line(exc)}")
    try:
        with contender.up(tb, workdir, mtu) as ends:
            run_tests(result, ends, seconds, display, congestion)
    except Skip as exc:
        result.status, result.notes = "skipped", [str(exc)]
    except EXPECTED_ERRORS as exc:
        result.status = "failed"
        result.notes.append(first_line(exc))
    result.settle()
    return result


def run_tests(
    result: Result,
    ends: Endpoints,
    seconds: float,
    display: Display,
    congestion: str | None = None,
) -> None:
    """Every test runs even if one fails: a failure costs one figure, noted, not the row."""
    figures, details = result.figures, result.details

    def attempt(test: str, fn: Callable[[], T]) -> T | None:
        display.step(test)
        try:
            return fn()
        except EXPECTED_ERRORS as exc:
            result.notes.append(f"{test}: {first_line(exc)}")
            return None

    count = max(10, round(seconds / PING_INTERVAL))
    stats = attempt("ping", lambda: measure.ping(ends.client, ends.server_addr, count))
    if stats is not None:
        figures["rtt_median_ms"], figures["rtt_p99_ms"] = stats.median_ms, stats.p99_ms
        details["ping_loss"] = stats.loss

    if not ends.pids:
        result.not_applicable += CPU_KEYS  # all in the kernel: nothing to time
    meter = measure.CpuMeter(ends.pids)

    def tcp_single() -> measure.TcpResult:
        with meter:
            return measure.iperf_tcp(
                ends.client, ends.server, ends.server_addr, seconds, 1, congestion
            )

    single = attempt("TCP, 1 stream", tcp_single)
    if single is not None:
        figures["tcp_1_stream_bps"] = single.bits_per_second
        details["tcp_1_stream_retransmits"] = single.retransmits
        details["tcp_congestion"] = single.congestion
        if ends.pids and single.bytes:
            gbits = single.bytes * 8 / 1e9
            figures["cpu_s_per_gbit"] = meter.seconds / gbits
            # The client sends the stream: its side's tunnel encrypts, the other decrypts.
            sender, receiver = meter.per_pid
            figures["cpu_sender_s_per_gbit"] = sender / gbits
            figures["cpu_receiver_s_per_gbit"] = receiver / gbits
            details["cpu_seconds_tcp_1_stream"] = meter.seconds

    parallel = attempt(
        "TCP, 4 streams",
        lambda: measure.iperf_tcp(
            ends.client, ends.server, ends.server_addr, seconds, 4, congestion
        ),
    )
    if parallel is not None:
        figures["tcp_4_streams_bps"] = parallel.bits_per_second

    udp = attempt(
        "UDP, 64-byte packets",
        lambda: measure.iperf_udp(ends.client, ends.server, ends.server_addr, seconds),
    )
    if udp is not None:
        figures["udp_64b_pps"] = udp.packets_per_second
        details["udp_64b_loss"] = udp.loss
