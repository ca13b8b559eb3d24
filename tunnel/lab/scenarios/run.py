"""Running the scenarios: each in both modes (pyvpn tun and pyvpn tap, native
plane), each on a testbed of its own, `rounds` times over in turns, like the
contenders; a failing test costs one figure, noted, not the scenario."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..contenders import Skip, header_overhead
from ..measure import EXPECTED_ERRORS
from ..report import Figure, Result, combine
from ..testbed import Testbed, first_line

MODES = ("tun", "tap")
T = TypeVar("T")


DEFAULT_HOSTS, DEFAULT_PEERS, DEFAULT_TRIALS = (10, 50), 3, 10


@dataclass(frozen=True)
class Settings:
    seconds: float  # per timed test (--time)
    mtu: int  # the tunnel's inner MTU (--mtu); the LANs' is 1500
    hosts: tuple[int, ...] = DEFAULT_HOSTS  # LAN hosts a side, one chatter run per size
    peers: int = DEFAULT_PEERS  # spokes of the hub
    trials: int = DEFAULT_TRIALS  # first-packet trials


class Display(Protocol):
    """bench.Display: live progress."""

    def begin(self, name: str, first: str = ...) -> None: ...

    def step(self, test: str) -> None: ...

    def end(self, result: Result) -> None: ...


@dataclass
class Run:
    """One scenario in one mode on its testbed: where figures go, and how a test is tried."""

    tb: Testbed
    mode: str
    workdir: Path
    settings: Settings
    result: Result
    display: Display

    def attempt(self, test: str, fn: Callable[[], T]) -> T | None:
        self.display.step(test)
        try:
            return fn()
        except EXPECTED_ERRORS as exc:
            self.result.notes.append(f"{test}: {first_line(exc)}")
            return None


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    description: str  # what it sets up and measures, for the report
    figures: Callable[[Settings], list[Figure]]
    # The network it measures (lan.two_lans or lan.star) and what it does on it:
    # scenarios one after another with the same setup share one network.
    setup: Callable[[Run], AbstractContextManager[Any]]
    measure: Callable[[Run, Any], None]
    namespaces: Callable[[Settings], int] = lambda settings: 2
    # What the figures alone do not say (who answered, what was offered), in words.
    explain: Callable[[Result], list[str]] = lambda result: []


def run_scenarios(
    scenarios: Sequence[Scenario], settings: Settings, display: Display, rounds: int = 1
) -> list[Result]:
    """Every scenario in both modes, in turns, `rounds` times; one Result per
    scenario and mode, each figure the median over the rounds."""
    runs: dict[tuple[str, str], list[Result]] = {(s.name, m): [] for s in scenarios for m in MODES}
    groups = [list(g) for _, g in itertools.groupby(scenarios, key=lambda s: s.setup)]
    with tempfile.TemporaryDirectory(prefix="pyvpn-scenarios-") as tmp:
        for n in range(1, rounds + 1):
            for group in groups:
                for mode in MODES:
                    if (
                        runs[group[0].name, mode]
                        and runs[group[0].name, mode][0].status == "skipped"
                    ):
                        continue
                    workdir = Path(tmp) / f"{group[0].name}-{mode}-{n}"
                    workdir.mkdir()
                    suffix = f" ({n}/{rounds})" if rounds > 1 else ""
                    results = measure_group(group, mode, workdir, settings, display, suffix)
                    for scenario, result in zip(group, results, strict=True):
                        runs[scenario.name, mode].append(result)
    return [combine(runs[s.name, m]) for s in scenarios for m in MODES]


def measure_group(
    group: Sequence[Scenario],
    mode: str,
    workdir: Path,
    settings: Settings,
    display: Display,
    suffix: str = "",
) -> list[Result]:
    """Scenarios that share a setup, one after another on one network in `mode`."""
    results = []
    for scenario in group:
        result = Result(scenario.name, scenario.name, mode, header_overhead(mode))
        result.version = f"pyvpn {mode}, native plane"
        result.figures = {f.key: None for f in scenario.figures(settings)}
        results.append(result)
    done = 0  # how many of the group have run
    display.begin(f"{group[0].name} {mode}{suffix}")
    try:
        size = max(s.namespaces(settings) for s in group)
        with (
            Testbed(size) as tb,
            group[0].setup(Run(tb, mode, workdir, settings, results[0], display)) as network,
        ):
            for scenario, result in zip(group, results, strict=True):
                if done:
                    display.end(results[done - 1])
                    display.begin(f"{scenario.name} {mode}{suffix}", "on the same network")
                try:
                    scenario.measure(Run(tb, mode, workdir, settings, result, display), network)
                except EXPECTED_ERRORS as exc:
                    result.status = "failed"
                    result.notes.append(first_line(exc))
                result.settle()
                done += 1
    except Skip as exc:
        for result in results:
            result.status, result.notes = "skipped", [str(exc)]
    except EXPECTED_ERRORS as exc:
        # The network failed: what had not run yet has no figure.
        for result in results[done:]:
            result.status = "failed"
            result.notes.append(first_line(exc))
    display.end(results[-1])
    return results
