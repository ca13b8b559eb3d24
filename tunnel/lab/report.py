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
)
FIGURE_KEYS = tuple(f.key for f in FIGURES)
BASELINE = "veth"


@dataclass
class Result:
    name: str
    family: str
    mode: str
    overhead_bytes: int | None
    status: str = "ok"  # "ok", "partial" (some tests failed), "failed", "skipped"
    notes: list[str] = field(default_factory=list)
    figures: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(FIGURE_KEYS))
    # Figures that have no meaning for this contender (CPU of a tunnel with no process).
    not_applicable: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def settle(self) -> None:
        """Set `status` from which figures were obtained."""
        if self.status in ("skipped", "failed"):
            return
        wanted = [k for k in FIGURE_KEYS if k not in self.not_applicable]
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
    out.not_applicable = list(first.not_applicable)
    for key in FIGURE_KEYS:
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


def to_json(results: Sequence[Result], settings: dict[str, Any]) -> dict[str, Any]:
    rel = ratios(results)
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count()},
        "baseline": BASELINE,
        "contenders": [
            {
                "name": r.name,
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


def write_json(path: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def _cell(figure: Figure, value: float | None, ratio: float | None, na: bool) -> str:
    if na:
        return "n/a"
    if value is None:
        return "—"
    text = f"{value / figure.scale:.{figure.digits}f}"
    return text + (f" [dim]({ratio:.2f}x)[/dim]" if ratio is not None else "")


def render_table(results: Sequence[Result], console: Console) -> None:
    rel = ratios(results)
    table = Table(title="pyvpn bench (ratio to raw veth in brackets)", title_justify="left")
    table.add_column("contender")
    table.add_column("mode")
    table.add_column("overhead\nB/pkt", justify="right")
    for figure in FIGURES:
        table.add_column(f"{figure.label}\n{figure.unit}", justify="right")
    for r in results:
        if r.status in ("skipped", "failed"):
            table.add_row(r.name, r.mode, "", f"[yellow]{r.status}[/yellow]")
            continue
        cells = [
            _cell(f, r.figures[f.key], rel[r.name][f.key], f.key in r.not_applicable)
            for f in FIGURES
        ]
        overhead = "" if r.overhead_bytes is None else str(r.overhead_bytes)
        table.add_row(r.name, r.mode, overhead, *cells)
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
    # Log scales: raw veth is 10-100x any tunnel, which would flatten every tunnel bar.
    panels = [
        ("tcp_1_stream_bps", "TCP, 1 stream (Gbit/s, log)", 1e9),
        ("tcp_4_streams_bps", "TCP, 4 streams (Gbit/s, log)", 1e9),
        ("rtt_median_ms", "ping RTT, median (ms, log)", 1.0),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
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
        ax.set_xticks(range(len(families)), families, rotation=20, ha="right")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(title="mode")
    fig.suptitle("pyvpn bench: tun (L3) and tap (L2) side by side; veth is the ceiling")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
