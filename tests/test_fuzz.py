"""A short run of every coverage-guided fuzzer (tests/fuzz/: libFuzzer for the
native plane's parsers, atheris for Python's), over its seed corpus and
whatever it finds in a few seconds. A crash fails with libFuzzer's report; a
longer run is `.venv/bin/python tests/fuzz/run --seconds 600` (docs/reliability.md)."""

import importlib.machinery
import importlib.util
import subprocess
import sys

import pytest

from .conftest import ROOT

# Heavy but not timing-sensitive: each harness replays its whole seed corpus at
# any speed before it explores. With the ASan test on a worker of their own in
# the parallel phase.
pytestmark = pytest.mark.xdist_group("sanitizers")

FUZZ = ROOT / "tests" / "fuzz"
HARNESSES = sorted(p.stem for p in (*FUZZ.glob("fuzz_*.c"), *FUZZ.glob("fuzz_*.py")))
SECONDS = 4


def test_every_harness_has_a_seed_corpus() -> None:
    assert len(HARNESSES) >= 8
    for name in HARNESSES:
        assert any((FUZZ / "corpus" / name).iterdir()), name


@pytest.mark.parametrize("name", HARNESSES)
def test_fuzzer_finds_no_crash(name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(FUZZ / "run"), "--seconds", str(SECONDS), name],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done " in result.stderr  # libFuzzer ran to its time limit


def test_a_harness_is_compiled_once_until_its_sources_change() -> None:
    loader = importlib.machinery.SourceFileLoader("fuzz_run", str(FUZZ / "run"))
    spec = importlib.util.spec_from_loader("fuzz_run", loader)
    run = importlib.util.module_from_spec(spec)
    loader.exec_module(run)
    first = run.build("fuzz_gro")
    built = first.stat().st_mtime_ns
    again = run.build("fuzz_gro")
    assert again == first and again.stat().st_mtime_ns == built
    assert [p.name for p in first.parent.glob("fuzz_gro-*")] == [first.name]
