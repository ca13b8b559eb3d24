"""What `pyvpn bench` found: per-contender results, the terminal table, the JSON and the chart."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    scale: float  # raw value / scale = shown value
    digits: int


FIGURES: tuple[Figure, ...] = (
    Figure("tcp_1_stream_bps", "TCP 1 stream", "Gbit/s", 1e9, 2),
    Figure("tcp_4_streams_bps", "TCP 4 streams", "Gbit/s", 1e9, 2),
    Figure("udp_64b_pps", "UDP 64 B", "kpps", 1e3, 1),
    Figure("rtt_median_ms", "RTT median", "ms", 1.0, 3),
    Figure("rtt_p99_ms", "RTT p99", "ms", 1.0, 3),
    Figure("cpu_s_per_gbit", "CPU", "s/Gbit", 1.0, 2),
    # The same seconds, split: the tunnel process on the sending side, and on the
    # receiving side (encrypting and decrypting are not the same work).
    Figure("cpu_sender_s_per_gbit", "CPU sender", "s/Gbit", 1.0, 2),
    Figure("cpu_receiver_s_per_gbit", "CPU receiver", "s/Gbit", 1.0, 2),
)
CPU_KEYS = ("cpu_s_per_gbit", "cpu_sender_s_per_gbit", "cpu_receiver_s_per_gbit")
FIGURE_KEYS = tuple(f.key for f in FIGURES)
BASELINE = "veth"


@dataclass
class Result:
    name: str
    family: str
    mode: str
    overhead_bytes: int | None
    status: str = "ok"  # "ok", "partial" (some tests failed), "failed", "skipped"
    version: str = ""  # what exactly ran (Contender.version)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(FIGURE_KEYS))
    # Figures that have no meaning for this contender (CPU of a tunnel with no process).
    not_applicable: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def settle(self) -> None:
        """Set `status` from which figures were obtained."""
        if self.status in ("skipped", "failed"):
            return
        wanted = [k for k in self.figures if k not in self.not_applicable]
        got = [k for k in wanted if self.figures[k] is not None]
        self.status = "ok" if len(got) == len(wanted) else "partial" if got else "failed"


def combine(rounds: Sequence[Result]) -> Result:
    """One contender's rounds as one result: each figure is the median over the
    rounds that obtained it, so one noisy round moves nothing; every round's own
    figures stay in the details."""
    if len(rounds) == 1:
        return rounds[0]
    first = rounds[0]
    out = Result(first.name, first.family, first.mode, first.overhead_bytes)
    out.version = first.version
    out.not_applicable = list(first.not_applicable)
    out.figures = dict.fromkeys(first.figures)
    for key in first.figures:
        got = [r.figures[key] for r in rounds if r.figures[key] is not None]
        out.figures[key] = statistics.median(got) if got else None
    for n, r in enumerate(rounds, start=1):
        out.notes += [f"round {n}: {note}" for note in r.notes]
    out.details["rounds"] = [
        {"status": r.status, "figures": r.figures, "details": r.details} for r in rounds
    ]
    if all(r.status == "skipped" for r in rounds):
        out.status = "skipped"
    out.settle()
    return out


def ratios(results: Sequence[Result]) -> dict[str, dict[str, float | None]]:
    """Each figure divided by raw veth's (throughput: share of the ceiling; RTT: times slower)."""
    base = next((r for r in results if r.name == BASELINE and r.status != "skipped"), None)
    out: dict[str, dict[str, float | None]] = {}
    for r in results:
        row: dict[str, float | None] = {}
        for key in FIGURE_KEYS:
            value, ref = r.figures[key], base.figures[key] if base else None
            row[key] = value / ref if value is not None and ref else None
        out[r.name] = row
    return out


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What a figure needs beside it to mean anything."""
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "kernel": platform.release()}


def spread(result: Result, key: str) -> tuple[float, float] | None:
    """The lowest and highest of a figure over the rounds that obtained it."""
    got = [
        r["figures"][key]
        for r in result.details.get("rounds", [])
        if r["figures"].get(key) is not None
    ]
    return (min(got), max(got)) if len(got) > 1 else None


def to_json(
    results: Sequence[Result],
    settings: dict[str, Any],
    scenarios: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`scenarios`: the tun and tap scenarios' entries (scenarios/output.py), if any ran."""
    rel = ratios(results)
    doc = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "machine": machine(),
        "baseline": BASELINE,
        "contenders": [
            {
                "name": r.name,
                "version": r.version,
                "family": r.family,
                "mode": r.mode,
                "status": r.status,
                "notes": r.notes,
                "header_overhead_bytes": r.overhead_bytes,
                "figures": r.figures,
                "not_applicable": r.not_applicable,
                "ratio_to_veth": rel[r.name],
                "details": r.details,
            }
            for r in results
        ],
    }
    if scenarios is not None:
        doc["scenarios"] = scenarios
    return doc


def write_json(path: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def _cell(figure: Figure, value: float | None, ratio: float | None, na: bool) -> str:
    if na:
        return "n/a"
    if value is None:
        return "—"
    return _number(figure, value) + (f" [dim]({ratio:.2f}x)[/dim]" if ratio is not None else "")


def render_table(results: Sequence[Result], console: Console) -> None:
    rel = ratios(results)
    table = Table(title="pyvpn bench (ratio to raw veth in brackets)", title_justify="left")
    table.add_column("contender", no_wrap=True)
    table.add_column("mode")
    table.add_column("overhead\nB/pkt", justify="right")
    for figure in FIGURES:
        table.add_column(f"{figure.label}\n{figure.unit}", justify="right")
    for r in results:
        name = f"{r.name}\n[dim]{r.version}[/dim]" if r.version else r.name
        if r.status in ("skipped", "failed"):
            table.add_row(name, r.mode, "", f"[yellow]{r.status}[/yellow]")
            continue
        cells = [
            _cell(f, r.figures[f.key], rel[r.name][f.key], f.key in r.not_applicable)
            for f in FIGURES
        ]
        overhead = "" if r.overhead_bytes is None else str(r.overhead_bytes)
        table.add_row(name, r.mode, overhead, *cells)
    console.print(table)
    for r in results:
        for note in r.notes:
            console.print(f"  [bold]{r.name}[/bold] ({r.status}): {note}", highlight=False)


def write_chart(path: str | os.PathLike[str], results: Sequence[Result]) -> None:
    """Bars per implementation, tun and tap side by side: TCP throughput and median RTT."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    shown = [r for r in results if r.status in ("ok", "partial")]
    families = list(dict.fromkeys(r.family for r in shown))
    modes = [m for m in ("raw", "tun", "tap") if any(r.mode == m for r in shown)]
    colours = {"raw": "#888888", "tun": "#1f77b4", "tap": "#ff7f0e"}
    # Each implementation named with its version, as in the table.
    versions = {r.family: r.version for r in reversed(shown)}
    labels = [f"{f}\n{versions[f]}" if versions[f] else f for f in families]
    # Log scales: raw veth is 10-100x any tunnel, which would flatten every tunnel bar.
    panels = [
        ("tcp_1_stream_bps", "TCP, 1 stream (Gbit/s, log)", 1e9),
        ("tcp_4_streams_bps", "TCP, 4 streams (Gbit/s, log)", 1e9),
        ("rtt_median_ms", "ping RTT, median (ms, log)", 1.0),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 6.5), squeeze=False)
    width = 0.8 / max(1, len(modes))
    for ax, (key, title, scale) in zip(axes[0], panels, strict=True):
        for mode in modes:
            xs, ys = [], []
            for i, family in enumerate(families):
                # Centre each family's bars, whether it has one mode (veth) or two.
                present = [r.mode for r in shown if r.family == family]
                match = [r for r in shown if r.family == family and r.mode == mode]
                if match and match[0].figures[key] is not None:
                    xs.append(i + (present.index(mode) - (len(present) - 1) / 2) * width)
                    ys.append(match[0].figures[key] / scale)
            bars = ax.bar(xs, ys, width, label=mode, color=colours[mode])
            ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
        ax.set_yscale("log")
        ax.margins(y=0.15)
        ax.set_title(title)
        ax.set_xticks(range(len(families)), labels, rotation=90, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(title="mode")
    fig.suptitle("pyvpn bench: tun (L3) and tap (L2) side by side; veth is the ceiling")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def _number(figure: Figure, value: float) -> str:
    return f"{value / figure.scale:.{figure.digits}f}"


def write_report(
    directory: str | os.PathLike[str],
    results: Sequence[Result],
    settings: dict[str, Any],
    command: str,
    scenarios: list[dict[str, Any]] | None = None,
    sections: Sequence[str] = (),
) -> Path:
    """DIR/report.md beside DIR/bench.json and DIR/bench.png: the tables with each
    figure's spread over the rounds, the chart, what each test measures, and the
    machine and versions it all came from. `scenarios` go into the JSON and
    `sections` (Markdown lines) after the contenders' table."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    doc = to_json(results, settings, scenarios)
    write_json(out / "bench.json", doc)
    if results:
        write_chart(out / "bench.png", results)
    rel = ratios(results)
    m = doc["machine"]
    lines = [
        "# pyvpn bench",
        "",
        f"`{command}`",
        "",
        f"- Date: {doc['created']}",
        f"- CPU: {m['cpu_model']}, {m['cpus']} cores",
        f"- Kernel: Linux {m['kernel']}",
        f"- TCP congestion control: {settings.get('tcp_congestion')}",
        f"- {settings['rounds']} round(s) of {settings['time_s']:g} s per test, inner MTU "
        f"{settings['mtu']}; each figure is the median over the rounds, with the lowest "
        "and highest round in brackets where there are several, and its ratio to raw "
        "veth after it.",
    ]
    if results:
        lines += [
            "",
            "| contender | version | mode | "
            + " | ".join(f"{f.label} {f.unit}" for f in FIGURES)
            + " |",
            "|---|---|---|" + "---|" * len(FIGURES),
        ]
    for r in results:
        if r.status in ("skipped", "failed"):
            lines.append(
                f"| {r.name} | {r.version} | {r.mode} | {r.status} |" + " |" * (len(FIGURES) - 1)
            )
            continue
        cells = []
        for f in FIGURES:
            value = r.figures[f.key]
            if f.key in r.not_applicable or value is None:
                cells.append("n/a" if f.key in r.not_applicable else "—")
                continue
            cell = _number(f, value)
            low_high = spread(r, f.key)
            if low_high:
                cell += f" ({_number(f, low_high[0])} to {_number(f, low_high[1])})"
            if rel[r.name][f.key] is not None and r.name != BASELINE:
                cell += f", {rel[r.name][f.key]:.2f}x veth"
            cells.append(cell)
        lines.append(f"| {r.name} | {r.version} | {r.mode} | " + " | ".join(cells) + " |")
    if results:
        lines += ["", "![pyvpn bench](bench.png)", "", "## What is measured", ""]
        lines += [f"- {text}" for text in TESTS]
    lines += sections
    notes = [f"- {r.name}: {note}" for r in results for note in r.notes]
    if notes:
        lines += ["", "## Notes", "", *notes]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# What each figure is, for the report (measure.py and bench.run_tests do it).
TESTS = (
    "TCP 1 stream, TCP 4 streams: iperf3 through the tunnel from the client "
    "namespace to the server's, what the receiver got.",
    "UDP 64 B: iperf3 offering 2 Gbit/s of 64-byte datagrams, the packets per second that arrived.",
    "RTT: ping every 0.2 s for the length of a test, the median and the 99th "
    "percentile (nearest rank).",
    "CPU: seconds the tunnel processes of both sides used during the 1-stream test, "
    "per gigabit moved; sender and receiver: each side's alone (the sender's "
    "encrypts, the receiver's decrypts). Raw veth has none: its work is the kernel's.",
)
