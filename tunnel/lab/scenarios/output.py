"""What the scenarios found, shown: a table per scenario with its variants (pyvpn
tun, pyvpn tap, tinc switch) side by side (the terminal's and the report's, each
figure with its spread over the rounds), their JSON, and a chart with a panel per
figure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..report import Figure, Result, spread
from .run import VARIANTS, Scenario, Settings

NAMES = [v.name for v in VARIANTS]


def _by_variant(results: Sequence[Result], scenario: Scenario) -> dict[str, Result]:
    return {r.family: r for r in results if r.name == scenario.name}


def _value(figure: Figure, value: float) -> str:
    return f"{value / figure.scale:.{figure.digits}f}"


def _cell(result: Result | None, figure: Figure) -> str:
    if result is None or result.status in ("skipped", "failed"):
        return result.status if result else ""
    value = result.figures.get(figure.key)
    if value is None:
        return "—"
    low_high = spread(result, figure.key)
    text = _value(figure, value)
    return text + (
        f" ({_value(figure, low_high[0])} to {_value(figure, low_high[1])})" if low_high else ""
    )


def render_tables(
    scenarios: Sequence[Scenario], results: Sequence[Result], settings: Settings, console: Console
) -> None:
    for scenario in scenarios:
        variants = _by_variant(results, scenario)
        table = Table(title=f"{scenario.title} ({scenario.name})", title_justify="left")
        table.add_column("figure")
        for name in NAMES:
            table.add_column(name, justify="right")
        for figure in scenario.figures(settings):
            table.add_row(
                f"{figure.label} ({figure.unit})", *(_cell(variants.get(n), figure) for n in NAMES)
            )
        console.print(table)
        for name in NAMES:
            result = variants.get(name)
            if result is None:
                continue
            for line in scenario.explain(result) + result.notes:
                console.print(f"  [bold]{name}[/bold]: {line}", highlight=False)


def to_json(
    scenarios: Sequence[Scenario], results: Sequence[Result], settings: Settings
) -> list[dict[str, Any]]:
    out = []
    for scenario in scenarios:
        for name, r in _by_variant(results, scenario).items():
            out.append(
                {
                    "name": scenario.name,
                    "title": scenario.title,
                    "variant": name,
                    "mode": r.mode,
                    "version": r.version,
                    "status": r.status,
                    "notes": r.notes,
                    "explained": scenario.explain(r),
                    "figures": r.figures,
                    "units": {f.key: f.unit for f in scenario.figures(settings)},
                    "spread": {k: spread(r, k) for k in r.figures},
                    "details": r.details,
                }
            )
    return out


def markdown(
    scenarios: Sequence[Scenario], results: Sequence[Result], settings: Settings, chart: str
) -> list[str]:
    """The report's section: per scenario what it does, and its table."""
    lines = [
        "",
        "## tun and tap scenarios",
        "",
        "pyvpn in tun mode and in tap mode (native plane), and tinc in switch mode (its "
        "L2, a learning switch as pyvpn's tap is) where it can run, on the same set-up; "
        "each figure is the median over the rounds, the lowest and highest round in "
        "brackets.",
        "",
    ]
    for scenario in scenarios:
        variants = _by_variant(results, scenario)
        lines += [
            f"### {scenario.title} (`{scenario.name}`)",
            "",
            scenario.description,
            "",
            "| figure | " + " | ".join(NAMES) + " |",
            "|---|" + "---|" * len(NAMES),
        ]
        for figure in scenario.figures(settings):
            cells = [_cell(variants.get(n), figure) for n in NAMES]
            lines.append(f"| {figure.label} ({figure.unit}) | " + " | ".join(cells) + " |")
        remarks = [
            f"- {name}: {line}"
            for name in NAMES
            if name in variants
            for line in scenario.explain(variants[name]) + variants[name].notes
        ]
        lines += ["", *remarks, ""] if remarks else [""]
    lines += [f"![tun and tap scenarios]({chart})"]
    return lines


def write_chart(
    path: str | os.PathLike[str],
    scenarios: Sequence[Scenario],
    results: Sequence[Result],
    settings: Settings,
) -> None:
    """A panel per figure: a bar per variant, each with its lowest and highest round."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    panels = [(s, f) for s in scenarios for f in s.figures(settings)]
    columns = min(4, max(1, len(panels)))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    colours = dict(zip(NAMES, ("#1f77b4", "#ff7f0e", "#2ca02c"), strict=True))
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (scenario, figure) in zip(axes.flat, panels, strict=False):
        variants = _by_variant(results, scenario)
        for x, name in enumerate(NAMES):
            r = variants.get(name)
            value = r.figures.get(figure.key) if r else None
            if value is None:
                continue
            low_high = spread(r, figure.key) if r else None
            err = None
            if low_high:
                err = [
                    [(value - low_high[0]) / figure.scale],
                    [(low_high[1] - value) / figure.scale],
                ]
            bars = ax.bar(
                [x],
                [value / figure.scale],
                0.6,
                yerr=err,
                capsize=4,
                color=colours[name],
                label=name,
            )
            ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
        ax.set_xticks(range(len(NAMES)), NAMES, fontsize=7)
        ax.set_title(f"{scenario.name}: {figure.label}\n({figure.unit})", fontsize=8)
        ax.margins(y=0.2)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "pyvpn bench scenarios: pyvpn tun and tap, tinc switch; error bars: lowest, highest round"
    )
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


CHART = "scenarios.png"  # in a --report directory


@dataclass(frozen=True)
class Found:
    """What a run of the scenarios found, and every way `pyvpn bench` shows it."""

    scenarios: Sequence[Scenario]
    results: Sequence[Result]
    settings: Settings

    def render(self, console: Console) -> None:
        render_tables(self.scenarios, self.results, self.settings, console)

    def json(self) -> list[dict[str, Any]]:
        return to_json(self.scenarios, self.results, self.settings)

    def json_settings(self) -> dict[str, Any]:
        return {
            "scenarios": [s.name for s in self.scenarios],
            "hosts": list(self.settings.hosts),
            "peers": self.settings.peers,
            "trials": self.settings.trials,
        }

    def chart_beside(self, chart: str | os.PathLike[str]) -> Path:
        """FILE-scenarios.png beside the contenders' FILE.png."""
        path = Path(chart)
        path = path.with_name(f"{path.stem}-scenarios{path.suffix or '.png'}")
        write_chart(path, self.scenarios, self.results, self.settings)
        return path

    def report_section(self, directory: str | os.PathLike[str]) -> list[str]:
        """DIR/scenarios.png, and the Markdown that shows it with the tables."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        write_chart(Path(directory) / CHART, self.scenarios, self.results, self.settings)
        return markdown(self.scenarios, self.results, self.settings, CHART)
