"""`pyvpn demo`: tun and tap through real namespaces; torn down on failure and Ctrl-C."""

from __future__ import annotations

import argparse

import pytest

from tunnel.lab import demo, measure
from tunnel.lab.testbed import TunnelStartError, host_problem

from ..bed import leftovers
from ..conftest import needs

# On the parallel phase's worker for the lab, one run at a time.
pytestmark = [needs(host_problem()), pytest.mark.netns, pytest.mark.xdist_group("lab")]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_demo_runs_tun_and_tap(capsys) -> None:
    code = demo.run(_args("--time", "1"))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    for line in ("pyvpn tun: ping 10.10.0.2", "pyvpn tap: ping 10.10.0.2", "raw veth"):
        assert line in printed.out
    assert printed.out.count("Gbit/s") >= 6  # three live lines, three summary rows
    congestion = measure.host_congestion()
    assert printed.out.count(f"TCP {congestion}: ") == 3
    assert f"TCP congestion control: {congestion}, the host's default." in printed.out
    assert leftovers() == []


def test_demo_failure_is_one_clear_line(monkeypatch, capsys) -> None:
    def refuses(*args: object, **kw: object) -> None:
        raise TunnelStartError("pyvpn up pvtunXa.toml exited with status 1", 1, "boom\nreason")

    monkeypatch.setattr(demo, "pyvpn_pair", refuses)
    assert demo.run(_args("--time", "1", "--mode", "tun")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pyvpn demo: pyvpn up pvtunXa.toml exited with status 1: reason"]
    assert leftovers() == []


def test_demo_ctrl_c_tears_down(monkeypatch, capsys) -> None:
    def interrupted(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt

    real_tcp = measure.iperf_tcp
    calls = []

    def interrupt_in_tunnel(*args: object, **kw: object) -> object:
        calls.append(args)
        if len(calls) == 2:  # the first is raw veth; the second runs through a live tunnel
            interrupted()
        return real_tcp(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(measure, "iperf_tcp", interrupt_in_tunnel)
    assert demo.run(_args("--time", "1", "--mode", "tap")) == 130
    assert "interrupted" in capsys.readouterr().err
    assert leftovers() == []
