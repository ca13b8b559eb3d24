"""Running the scenarios: each with every variant (pyvpn tun and pyvpn tap on the
native plane, and tinc in switch mode where it can run), each on a testbed of its
own, `rounds` times over in turns, like the contenders; a failing test costs one
figure, noted, not the scenario."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..contenders import CONTENDERS, Contender, Skip
from ..measure import EXPECTED_ERRORS
from ..report import Figure, Result, combine
from ..testbed import Testbed, first_line

# The tunnels the scenarios compare, as the contenders' table names them: the
# name labels a variant's results, the mode is the network lan.py builds for it.
# tinc's switch mode is the one L2 peer of pyvpn's tap mode.
VARIANTS: tuple[Contender, ...] = tuple(
    c for c in CONTENDERS if c.name in ("pyvpn-tun-native", "pyvpn-tap-native", "tinc-switch")
)
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
    """One scenario with one variant on its testbed: where figures go, and how a
    test is tried."""

    tb: Testbed
    variant: Contender
    workdir: Path
    settings: Settings
    result: Result
    display: Display

    @property
    def mode(self) -> str:
        return self.variant.mode

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
    # The variants that cannot run it, each with why (a skipped row, so noted).
    not_run: dict[str, str] = field(default_factory=dict)


def run_scenarios(
    scenarios: Sequence[Scenario], settings: Settings, display: Display, rounds: int = 1
) -> list[Result]:
    """Every scenario with every variant that can run it, in turns, `rounds` times;
    one Result per scenario and variant, each figure the median over the rounds."""
    runs: dict[tuple[str, str], list[Result]] = {
        (s.name, v.name): [] for s in scenarios for v in VARIANTS
    }
    groups = [list(g) for _, g in itertools.groupby(scenarios, key=lambda s: s.setup)]
    with tempfile.TemporaryDirectory(prefix="pyvpn-scenarios-") as tmp:
        for n in range(1, rounds + 1):
            for group in groups:
                for variant in VARIANTS:
                    todo = [
                        s
                        for s in group
                        if variant.name not in s.not_run
                        and not _skipped(runs[s.name, variant.name])
                    ]
                    if not todo:
                        continue
                    workdir = Path(tmp) / f"{todo[0].name}-{variant.name}-{n}"
                    workdir.mkdir()
                    suffix = f" ({n}/{rounds})" if rounds > 1 else ""
                    results = measure_group(todo, variant, workdir, settings, display, suffix)
                    for scenario, result in zip(todo, results, strict=True):
                        runs[scenario.name, variant.name].append(result)
    return [
        combine(runs[s.name, v.name]) if runs[s.name, v.name] else _not_run(s, v, settings)
        for s in scenarios
        for v in VARIANTS
    ]


def _skipped(rounds: list[Result]) -> bool:
    """Skipped in an earlier round: it cannot run here, so it is not tried again."""
    return bool(rounds) and rounds[0].status == "skipped"


def _result(scenario: Scenario, variant: Contender, settings: Settings) -> Result:
    result = Result(scenario.name, variant.name, variant.mode, variant.overhead_bytes())
    result.version = variant.version()
    result.figures = {f.key: None for f in scenario.figures(settings)}
    return result


def _not_run(scenario: Scenario, variant: Contender, settings: Settings) -> Result:
    result = _result(scenario, variant, settings)
    result.status, result.notes = "skipped", [scenario.not_run[variant.name]]
    return result


def measure_group(
    group: Sequence[Scenario],
    variant: Contender,
    workdir: Path,
    settings: Settings,
    display: Display,
    suffix: str = "",
) -> list[Result]:
    """Scenarios that share a setup, one after another on one network with `variant`."""
    results = [_result(scenario, variant, settings) for scenario in group]
    done = 0  # how many of the group have run
    display.begin(f"{group[0].name} {variant.name}{suffix}")
    try:
        missing = variant.missing_tool()
        if missing:
            raise Skip(missing)
        size = max(s.namespaces(settings) for s in group)
        with (
            Testbed(size) as tb,
            group[0].setup(Run(tb, variant, workdir, settings, results[0], display)) as network,
        ):
            for scenario, result in zip(group, results, strict=True):
                if done:
                    display.end(results[done - 1])
                    display.begin(f"{scenario.name} {variant.name}{suffix}", "on the same network")
                try:
                    scenario.measure(Run(tb, variant, workdir, settings, result, display), network)
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
