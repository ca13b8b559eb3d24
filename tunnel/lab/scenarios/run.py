"""Running the scenarios: each in both modes (pyvpn tun and pyvpn tap, native
plane), each on a testbed of its own, `rounds` times over in turns, like the
contenders; a failing test costs one figure, noted, not the scenario."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from ..contenders import Skip, header_overhead
from ..measure import EXPECTED_ERRORS
from ..report import Figure, Result, combine
from ..testbed import Testbed, first_line

MODES = ("tun", "tap")
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    seconds: float  # per timed test (--time)
    mtu: int  # the tunnel's inner MTU (--mtu); the LANs' is 1500
    hosts: tuple[int, ...] = (10, 50)  # LAN hosts per side, one chatter run per size
    peers: int = 3  # spokes of the hub
    trials: int = 10  # first-packet trials


class Display(Protocol):
    def begin(self, name: str) -> None: ...

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
    measure: Callable[[Run], None]
    namespaces: Callable[[Settings], int] = lambda settings: 2
    # What the figures alone do not say (who answered, what was offered), in words.
    explain: Callable[[Result], list[str]] = lambda result: []


def run_scenarios(
    scenarios: Sequence[Scenario], settings: Settings, display: Display, rounds: int = 1
) -> list[Result]:
    """Every scenario in both modes, in turns, `rounds` times; one Result per
    scenario and mode, each figure the median over the rounds."""
    runs: dict[tuple[str, str], list[Result]] = {(s.name, m): [] for s in scenarios for m in MODES}
    with tempfile.TemporaryDirectory(prefix="pyvpn-scenarios-") as tmp:
        for n in range(1, rounds + 1):
            for scenario in scenarios:
                for mode in MODES:
                    done = runs[scenario.name, mode]
                    if done and done[0].status == "skipped":
                        continue
                    label = f"{scenario.name} {mode}" + (f" ({n}/{rounds})" if rounds > 1 else "")
                    display.begin(label)
                    workdir = Path(tmp) / f"{scenario.name}-{mode}-{n}"
                    workdir.mkdir()
                    result = measure_scenario(scenario, mode, workdir, settings, display)
                    display.end(result)
                    done.append(result)
    return [combine(runs[s.name, m]) for s in scenarios for m in MODES]


def measure_scenario(
    scenario: Scenario, mode: str, workdir: Path, settings: Settings, display: Display
) -> Result:
    result = Result(scenario.name, scenario.name, mode, header_overhead(mode))
    result.version = f"pyvpn {mode}, native plane"
    result.figures = {f.key: None for f in scenario.figures(settings)}
    try:
        with Testbed(scenario.namespaces(settings)) as tb:
            scenario.measure(Run(tb, mode, workdir, settings, result, display))
    except Skip as exc:
        result.status, result.notes = "skipped", [str(exc)]
    except EXPECTED_ERRORS as exc:
        result.status = "failed"
        result.notes.append(first_line(exc))
    result.settle()
    return result
