"""`pyvpn bench --scenarios`: the tun-versus-tap scenarios, on small sizes (two
hosts a side, one-second tests, one round), with pyvpn in both modes and tinc in
switch mode. No test asserts a speed:
each checks that a scenario produced its figures, of plausible kinds, from what
really crossed, and that it left nothing behind."""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
from rich.console import Console

from tunnel.lab import bench
from tunnel.lab.measure import MeasurementError
from tunnel.lab.report import Figure, Result
from tunnel.lab.scenarios import NAMES, SCENARIOS, first_packet, frames
from tunnel.lab.scenarios.chatter import FRAMES_PER_ROUND, ROUNDS_PER_S
from tunnel.lab.scenarios.lan import TAP_SUBNETS, TINC_FULL_SIZE, TUN_SUBNETS
from tunnel.lab.scenarios.options import MAX_HOSTS
from tunnel.lab.scenarios.output import write_chart
from tunnel.lab.scenarios.run import VARIANTS, Run, Scenario, Settings, measure_group
from tunnel.lab.testbed import host_problem
from tunnel.protocol.constants import DEFAULT_MTU

from ..bed import leftovers
from ..conftest import needs, unavailable
from ..packets import csum

# What the lab prints, not how fast: on the parallel phase's worker for the lab,
# one run at a time.
pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("lab")]

_PROBLEM = host_problem(("ip", "ping", "iperf3", "ss", "tincd"))
root_only = needs(_PROBLEM)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTS, PEERS, TRIALS = 2, 3, 2
TUN, TAP, TINC = (v.name for v in VARIANTS)
# The scenarios tinc runs; the others send full-size LAN packets (TINC_FULL_SIZE).
TINC_RUNS = ("chatter", "first-packet", "flooding")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Any]:
    """One `pyvpn bench --only none --scenarios all` on small sizes, with a report."""
    if _PROBLEM is not None:
        unavailable(_PROBLEM)
    out = tmp_path_factory.mktemp("scenarios")
    code = bench.run(
        _args("--only", "none", "--scenarios", "all", "--hosts", str(HOSTS), "--peers",
              str(PEERS), "--trials", str(TRIALS), "--time", "1", "--report", str(out / "report"),
              "--json", str(out / "bench.json"), "--chart", str(out / "chart.png"))
    )  # fmt: skip
    doc = json.loads((out / "bench.json").read_text())
    return {"code": code, "doc": doc, "out": out, "leftovers": leftovers()}


def _scenario(run: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """The scenario's entries by variant that ran, each of which must have run in full."""
    entries = {e["variant"]: e for e in run["doc"]["scenarios"] if e["name"] == name}
    assert set(entries) == {TUN, TAP, TINC}
    if name not in TINC_RUNS:
        tinc = entries.pop(TINC)
        assert (tinc["status"], tinc["notes"]) == ("skipped", [TINC_FULL_SIZE[TINC]])
    for entry in entries.values():
        assert entry["status"] == "ok", (name, entry["variant"], entry["notes"])
        for key, value in entry["figures"].items():
            assert isinstance(value, float) and value >= 0, (name, entry["variant"], key, value)
    return entries


@root_only
def test_the_run_succeeds_and_leaves_nothing_behind(run) -> None:
    assert run["code"] == 0
    assert run["leftovers"] == []
    assert [e["name"] for e in run["doc"]["scenarios"]] == [n for n in NAMES for _ in VARIANTS]
    assert run["doc"]["contenders"] == []
    settings = run["doc"]["settings"]
    assert settings["scenarios"] == list(NAMES)
    assert (settings["hosts"], settings["peers"], settings["trials"]) == ([HOSTS], PEERS, TRIALS)


@root_only
def test_chatter_crosses_a_tap_bridge_and_not_a_tun_gateway(run) -> None:
    entries = _scenario(run, "chatter")
    prefix = f"chatter_{HOSTS}_hosts"
    tap, tun = entries[TAP], entries[TUN]
    offered = tap["details"][prefix]
    # Both sides' hosts sent their rounds; all of it is flooded across on tap.
    per_second = 2 * HOSTS * FRAMES_PER_ROUND * ROUNDS_PER_S
    assert offered["offered_frames"] >= per_second * 0.5
    assert offered["delivered_frames"] >= offered["offered_frames"] * 0.9
    assert tap["figures"][f"{prefix}_pps"] == offered["delivered_frames"] / offered["seconds"]
    # The underlay carried every frame with its headers.
    assert offered["underlay_bytes"] > offered["offered_bytes"]
    assert tap["figures"][f"{prefix}_bytes_per_s"] == offered["underlay_bytes"] / offered["seconds"]
    # A router forwards none of it.
    routed = tun["details"][prefix]
    assert routed["offered_frames"] >= per_second * 0.5
    assert routed["delivered_frames"] < routed["offered_frames"] / 10
    assert routed["underlay_bytes"] < routed["offered_bytes"] / 4  # at most the underlay's ARP
    for entry in entries.values():
        assert entry["units"][f"{prefix}_cpu_percent"] == "% of a core"


@root_only
def test_lan_mtu_names_who_answered_and_what_became_of_full_size_datagrams(run) -> None:
    entries = _scenario(run, "lan-mtu")
    for entry in entries.values():
        figures, details = entry["figures"], entry["details"]
        assert figures["lan_tcp_bps"] > 0
        assert figures["path_mtu_bytes"] == details["path_mtu"]["icmp_mtu"] <= DEFAULT_MTU
        assert 0 < figures["udp_1472_delivered"] <= 1
        assert 0 <= figures["udp_1472_fragmented"] <= 1
        assert details["udp_1472"]["received"] <= details["udp_1472"]["sent"]
        assert entry["explained"] and "fragmentation needed" in entry["explained"][0]
    # tap: pyvpn answers in the name of the far host; tun: the near gateway's kernel.
    far_host = str(ipaddress.ip_network(TAP_SUBNETS[0])[2])
    near_gateway = str(ipaddress.ip_network(TUN_SUBNETS[0][0])[1])
    assert entries[TAP]["details"]["path_mtu"]["icmp_from"] == far_host
    assert entries[TUN]["details"]["path_mtu"]["icmp_from"] == near_gateway


@root_only
def test_first_packet_times_every_trial(run) -> None:
    for entry in _scenario(run, "first-packet").values():
        figures, details = entry["figures"], entry["details"]
        first = details["first_reply_ms"]
        assert len(first) + details["trials_without_both_replies"] == TRIALS and first
        assert figures["first_reply_min_ms"] == min(first) > 0
        assert figures["first_reply_max_ms"] == max(first)
        assert min(first) <= figures["first_reply_median_ms"] <= max(first)
        assert figures["next_reply_median_ms"] > 0


@root_only
def test_flooding_reaches_every_spoke_on_tap_and_one_on_tun(run) -> None:
    entries = _scenario(run, "flooding")
    tap, tun = entries[TAP]["figures"], entries[TUN]["figures"]
    for entry in entries.values():
        assert entry["details"]["spokes"] == PEERS
    # Each byte flooded goes to every spoke, headers on top; unicast to one.
    for kind in ("broadcast", "unknown_unicast"):
        assert tap[f"{kind}_underlay_bytes_per_byte"] > PEERS
        assert tun[f"{kind}_underlay_bytes_per_byte"] < 0.1
    for figures in (tap, tun):
        assert 1 < figures["unicast_underlay_bytes_per_byte"] < 2
        assert figures["unicast_hub_cpu_s_per_gbit"] > 0


@root_only
def test_tinc_switch_stands_beside_pyvpn_tap_where_it_runs(run) -> None:
    """tinc's learning switch carries the chatter and floods the hub's broadcasts
    as pyvpn's tap does; its rows are labelled with what ran."""
    for name in TINC_RUNS:
        tinc = _scenario(run, name)[TINC]
        assert tinc["mode"] == "tap" and tinc["version"].startswith("tinc 1.0")
        assert tinc["version"].endswith("switch mode")
    for name in NAMES:
        assert _scenario(run, name)[TAP]["version"].endswith("native plane")
    prefix = f"chatter_{HOSTS}_hosts"
    chatter = _scenario(run, "chatter")[TINC]["details"][prefix]
    assert chatter["offered_frames"] >= 2 * HOSTS * FRAMES_PER_ROUND * ROUNDS_PER_S * 0.5
    assert chatter["delivered_frames"] >= chatter["offered_frames"] * 0.9
    assert chatter["underlay_bytes"] > chatter["offered_bytes"]
    assert _scenario(run, "first-packet")[TINC]["figures"]["first_reply_median_ms"] > 0
    flooding = _scenario(run, "flooding")[TINC]
    assert flooding["details"]["spokes"] == PEERS
    for kind in ("broadcast", "unknown_unicast"):
        assert flooding["figures"][f"{kind}_underlay_bytes_per_byte"] > PEERS
    assert 1 < flooding["figures"]["unicast_underlay_bytes_per_byte"] < 2
    assert flooding["figures"]["unicast_hub_cpu_s_per_gbit"] > 0


@root_only
def test_ipv6_inside_measures_both_families(run) -> None:
    for entry in _scenario(run, "ipv6").values():
        for family in ("v4", "v6"):
            assert entry["figures"][f"tcp_{family}_bps"] > 0
            assert entry["figures"][f"rtt_{family}_median_ms"] > 0
            assert entry["details"][f"ping_{family}_loss"] < 1


@root_only
def test_report_and_chart_show_every_scenario(run) -> None:
    report = run["out"] / "report"
    text = (report / "report.md").read_text()
    assert "## tun and tap scenarios" in text and "![tun and tap scenarios](scenarios.png)" in text
    for name in NAMES:
        assert f"(`{name}`)" in text
    assert "| figure | pyvpn-tun-native | pyvpn-tap-native | tinc-switch |" in text
    assert not (report / "bench.png").exists()  # no contender ran
    for png in (report / "scenarios.png", run["out"] / "chart-scenarios.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(png).shape[0] > 300
    doc = json.loads((report / "bench.json").read_text())
    assert len(doc["scenarios"]) == len(VARIANTS) * len(NAMES)


@root_only
def test_a_failing_scenario_costs_its_own_figures_only(tmp_path: Path) -> None:
    """Scenarios on one network: the one that fails is noted, the next still runs."""
    figure = [Figure("x_count", "x", "count", 1.0, 0)]

    @contextlib.contextmanager
    def setup(run: Run) -> Iterator[str]:
        yield run.tb.a.name

    def broken(run: Run, network: str) -> None:
        raise MeasurementError("simulated failure")

    def working(run: Run, network: str) -> None:
        run.result.figures["x_count"] = float(len(run.tb.a.pids()) + 1)

    group = [Scenario("broken", "B", "", lambda s: figure, setup, broken),
             Scenario("working", "W", "", lambda s: figure, setup, working)]  # fmt: skip
    display = bench.Display(Console(file=io.StringIO()))
    results = measure_group(group, VARIANTS[0], tmp_path, Settings(1.0, DEFAULT_MTU), display)
    assert [r.status for r in results] == ["failed", "ok"]
    assert results[0].notes == ["simulated failure"] and results[0].figures["x_count"] is None
    assert results[1].figures["x_count"] == 1.0
    assert leftovers() == []


@root_only
def test_ctrl_c_in_a_scenario_tears_everything_down(monkeypatch, capsys) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(first_packet, "forget_neighbours", interrupted)
    argv = ("--only", "none", "--scenarios", "first-packet", "--trials", "1", "--time", "1")
    assert bench.run(_args(*argv)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert leftovers() == []


# ---------------------------------------------------------------------------
# Usage errors: nothing is set up


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenarios", "chatter,nonsense"], "unknown scenario nonsense"),
        (["--only", "none"], "--only none runs no contender"),
        (["--scenarios", "chatter", "--hosts", "2,x"], "--hosts takes numbers"),
        (["--scenarios", "chatter", "--hosts", "0"], "--hosts must list sizes"),
        (["--scenarios", "flooding", "--peers", "1"], "--peers must be between 2"),
    ],
)
def test_bad_scenario_arguments_are_usage_errors(argv: list[str], message: str, capsys) -> None:
    assert bench.run(_args(*argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyvpn bench: ") and message in err
    assert len(err.splitlines()) == 1
    assert leftovers() == []


# ---------------------------------------------------------------------------
# The chatter generator's frames


def test_chatter_frames_carry_valid_checksums_and_the_hosts_addresses() -> None:
    subnet4, subnet6 = TAP_SUBNETS
    arp, ns, mdns4, mdns6, dhcp = frames.host_chatter(1, 0, 2, subnet4, subnet6)
    mac = frames.host_mac(1, 0)
    for frame in (arp, ns, mdns4, mdns6, dhcp):
        assert frame[6:12] == mac
    # ARP: who has host 1 (of side 1), from host 0.
    assert arp[:6] == frames.BROADCAST_MAC and arp[12:14] == b"\x08\x06"
    assert ipaddress.IPv4Address(arp[38:42]) == ipaddress.IPv4Address(
        frames.host_ipv4(subnet4, 1, 1)
    )
    # IPv4: the header checksum and the UDP checksum over the pseudo-header verify.
    for frame, group in ((mdns4, frames.MDNS_V4), (dhcp, "255.255.255.255")):
        ip = frame[14:]
        assert csum(ip[:20]) == 0
        assert ipaddress.IPv4Address(ip[16:20]) == ipaddress.IPv4Address(group)
        length = struct.unpack("!H", ip[24:26])[0]
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, length)
        assert csum(pseudo + ip[20 : 20 + length]) == 0
    assert mdns4[:6] == bytes.fromhex("01005e0000fb")
    # IPv6: the solicited-node group of the target, and the ICMPv6/UDP checksums verify.
    for frame, next_header in ((ns, 58), (mdns6, 17)):
        ip = frame[14:]
        length = struct.unpack("!H", ip[4:6])[0]
        pseudo = ip[8:40] + struct.pack("!I3xB", length, next_header)
        assert csum(pseudo + ip[40 : 40 + length]) == 0
    target = ipaddress.IPv6Address(frames.host_ipv6(subnet6, 1, 1))
    assert ns[14 + 24 : 14 + 40][-3:] == target.packed[-3:]
    assert mdns6[:6] == bytes.fromhex("3333000000fb")


def test_hosts_of_the_two_sides_never_share_an_address() -> None:
    subnet4, _ = TAP_SUBNETS
    sides = [{frames.host_ipv4(subnet4, side, i) for i in range(MAX_HOSTS)} for side in (0, 1)]
    assert not sides[0] & sides[1]
    assert len(sides[0]) == MAX_HOSTS


def test_the_chart_needs_no_figures_to_be_a_png(tmp_path: Path) -> None:
    settings = Settings(1.0, DEFAULT_MTU, (2,))
    results = [
        Result(s.name, v.name, v.mode, None, status="failed") for s in SCENARIOS for v in VARIANTS
    ]
    write_chart(tmp_path / "s.png", SCENARIOS, results, settings)
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC
