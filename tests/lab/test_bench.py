"""`pyvpn bench` and the measurements under it. No test asserts a speed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from tunnel.lab import bench, contenders, measure, report
from tunnel.lab.contenders import header_overhead
from tunnel.lab.report import FIGURE_KEYS, Result, combine, ratios, write_chart
from tunnel.lab.testbed import host_problem

from ..bed import leftovers
from ..conftest import NATIVE_MISSING, needs

# What the lab prints, not how fast: on the parallel phase's worker for the lab,
# one run at a time.
pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("lab")]

root_only = needs(host_problem(("ip", "ping", "iperf3", "ss", "wireguard-go", "wg")))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


# ---------------------------------------------------------------------------
# The command, end to end


@root_only
def test_short_run_writes_every_figure_and_a_png(tmp_path: Path, capsys) -> None:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = bench.run(
        _args("--time", "1", "--only", "veth,wireguard-go", "--congestion", "reno",
              "--json", str(out_json), "--chart", str(out_png))
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    doc = json.loads(out_json.read_text())
    names = [c["name"] for c in doc["contenders"]]
    assert names == ["veth", "wireguard-go"]
    for contender in doc["contenders"]:
        assert contender["status"] == "ok", contender["notes"]
        for key in FIGURE_KEYS:
            value = contender["figures"][key]
            if key in contender["not_applicable"]:
                assert value is None
            else:
                assert isinstance(value, float) and value > 0, (contender["name"], key)
        assert contender["ratio_to_veth"]["tcp_1_stream_bps"] > 0
        assert contender["details"]["tcp_congestion"] == "reno"  # as iperf3 saw it
    assert doc["contenders"][0]["not_applicable"] == [
        "cpu_s_per_gbit", "cpu_sender_s_per_gbit", "cpu_receiver_s_per_gbit",
    ]  # fmt: skip
    cpu = doc["contenders"][1]["figures"]
    assert cpu["cpu_sender_s_per_gbit"] + cpu["cpu_receiver_s_per_gbit"] == pytest.approx(
        cpu["cpu_s_per_gbit"]
    )
    assert doc["contenders"][1]["header_overhead_bytes"] == 60
    assert doc["settings"]["time_s"] == 1 and doc["settings"]["mtu"] == bench.DEFAULT_MTU
    assert doc["settings"]["tcp_congestion"] == "reno"
    assert "TCP congestion control: reno (--congestion)." in " ".join(printed.out.split())
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.image.imread(out_png).shape[0] > 100
    assert "wireguard-go" in printed.out and "Header overhead" in printed.out
    # Every contender named with what exactly ran.
    assert doc["contenders"][0]["version"].startswith("Linux ")
    assert doc["contenders"][1]["version"].startswith("wireguard-go 0.0.2026")  # sid's
    assert doc["contenders"][1]["version"] in " ".join(printed.out.split())
    assert leftovers() == []


@root_only
def test_the_older_wireguard_go_and_the_python_floor_run_labelled(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    code = bench.run(
        _args("--time", "1", "--only", "wireguard-go-bookworm,python-floor",
              "--json", str(out_json))
    )  # fmt: skip
    assert code == 0
    doc = {c["name"]: c for c in json.loads(out_json.read_text())["contenders"]}
    assert doc["wireguard-go-bookworm"]["version"] == "wireguard-go 0.0.20220316-1+b4"
    assert doc["python-floor"]["version"].startswith("a reference, not a VPN")
    for contender in doc.values():
        assert contender["status"] == "ok", contender["notes"]
        assert contender["figures"]["tcp_1_stream_bps"] > 0
        assert contender["figures"]["cpu_receiver_s_per_gbit"] > 0
    assert doc["python-floor"]["header_overhead_bytes"] == 20 + 8 + 12 + 16
    assert leftovers() == []


@root_only
def test_missing_tool_is_skipped_with_a_note(tmp_path: Path, monkeypatch, capsys) -> None:
    real_which = contenders.shutil.which
    monkeypatch.setattr(
        contenders.shutil, "which", lambda t: None if t == "openvpn" else real_which(t)
    )
    out_json = tmp_path / "b.json"
    assert bench.run(_args("--time", "1", "--only", "openvpn-tap", "--json", str(out_json))) == 0
    (contender,) = json.loads(out_json.read_text())["contenders"]
    assert contender["status"] == "skipped"
    assert contender["notes"] == ["openvpn is not installed"]
    assert "openvpn is not installed" in capsys.readouterr().out
    assert leftovers() == []


@root_only
def test_ctrl_c_tears_everything_down(monkeypatch, capsys) -> None:
    def interrupted(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(measure, "iperf_udp", interrupted)
    assert bench.run(_args("--time", "1", "--only", "wireguard-go")) == 130
    assert "interrupted" in capsys.readouterr().err
    assert leftovers() == []


@root_only
def test_a_failing_test_costs_one_figure(tmp_path: Path, monkeypatch) -> None:
    def broken(*args: object, **kw: object) -> None:
        raise measure.MeasurementError("iperf3: simulated failure")

    monkeypatch.setattr(measure, "iperf_udp", broken)
    out_json = tmp_path / "b.json"
    assert bench.run(_args("--time", "1", "--only", "veth", "--json", str(out_json))) == 0
    (veth,) = json.loads(out_json.read_text())["contenders"]
    assert veth["status"] == "partial"
    assert veth["figures"]["udp_64b_pps"] is None
    assert veth["figures"]["tcp_1_stream_bps"] > 0
    assert any("simulated failure" in note for note in veth["notes"])
    assert leftovers() == []


@root_only
def test_rounds_alternate_contenders_and_report_medians(tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "b.json"
    argv = ("--time", "1", "--only", "veth,wireguard-go", "--rounds", "2", "--json", str(out_json))
    assert bench.run(_args(*argv)) == 0
    printed = capsys.readouterr()
    # Contenders take turns: a drift of the machine during the run reaches both.
    begun = [line.split(":")[1].strip() for line in printed.err.splitlines() if "starting" in line]
    assert begun == ["veth (1/2)", "wireguard-go (1/2)", "veth (2/2)", "wireguard-go (2/2)"]
    doc = json.loads(out_json.read_text())
    assert doc["settings"]["rounds"] == 2
    assert doc["settings"]["tcp_congestion"] == measure.host_congestion()  # from the rounds
    for contender in doc["contenders"]:
        rounds = contender["details"]["rounds"]
        assert [r["status"] for r in rounds] == ["ok", "ok"], contender["notes"]
        for key in FIGURE_KEYS:
            per_round = [r["figures"][key] for r in rounds]
            if key in contender["not_applicable"]:
                assert contender["figures"][key] is None
            else:
                assert contender["figures"][key] == pytest.approx(sum(per_round) / 2)
    assert "median of 2 rounds" in printed.out
    assert leftovers() == []


@root_only
def test_workers_run_each_native_pyvpn_once_per_count_in_turns(tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "b.json"
    argv = ("--time", "1", "--only", "pyvpn-tun-native", "--workers", "0,2", "--rounds", "2")
    assert bench.run(_args(*argv, "--json", str(out_json))) == 0
    printed = capsys.readouterr()
    begun = [line.split(":")[1].strip() for line in printed.err.splitlines() if "starting" in line]
    assert begun == [
        "pyvpn-tun-native-crypto0 (1/2)", "pyvpn-tun-native-crypto2 (1/2)",
        "pyvpn-tun-native-crypto0 (2/2)", "pyvpn-tun-native-crypto2 (2/2)",
    ]  # fmt: skip
    doc = {c["name"]: c for c in json.loads(out_json.read_text())["contenders"]}
    assert doc["pyvpn-tun-native-crypto0"]["version"].endswith("native plane, 0 crypto workers")
    assert doc["pyvpn-tun-native-crypto2"]["version"].endswith("native plane, 2 crypto workers")
    for contender in doc.values():
        assert contender["status"] == "ok", contender["notes"]
        assert contender["figures"]["tcp_1_stream_bps"] > 0
    assert leftovers() == []


@needs(NATIVE_MISSING)
def test_the_pipeline_alone_is_measured_for_each_count_of_workers(capsys) -> None:
    assert bench.run(_args("--pipeline", "--workers", "1,2")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("crypto pipeline alone: 1420-byte packets")
    assert [line.split(":")[0].strip() for line in lines[1:3]] == [
        "1 crypto worker",
        "2 crypto workers",
    ]
    assert all("packets/s" in line and "per CPU-second" in line for line in lines[1:3])


@pytest.mark.parametrize("workers", ["a,1", "1,,2", "65", "-1"])
def test_workers_must_be_counts(capsys, workers: str) -> None:
    assert bench.run(_args("--workers", workers)) == 2
    assert "--workers takes counts from 0 to 64" in capsys.readouterr().err


def test_rounds_must_be_positive(capsys) -> None:
    assert bench.run(_args("--rounds", "0")) == 2
    assert "--rounds" in capsys.readouterr().err


def test_unknown_congestion_control_is_a_usage_error(capsys) -> None:
    assert bench.run(_args("--congestion", "nonsense")) == 2
    err = capsys.readouterr().err
    assert "--congestion nonsense is not available here" in err and "cubic" in err


@root_only
def test_the_other_vpns_run_labelled_with_their_versions(tmp_path: Path) -> None:
    """trixie's wireguard-go, Nebula and tinc in both modes come up, carry the tests
    and say exactly what ran (the versions scripts/setup installs)."""
    out_json = tmp_path / "bench.json"
    only = "wireguard-go-trixie,nebula,tinc-router,tinc-switch"
    assert bench.run(_args("--time", "1", "--only", only, "--json", str(out_json))) == 0
    doc = {c["name"]: c for c in json.loads(out_json.read_text())["contenders"]}
    assert doc["wireguard-go-trixie"]["version"] == "wireguard-go 0.0.20231211-1+b9"
    assert doc["nebula"]["version"] == "Nebula 1.11.0+dfsg-1"
    assert doc["tinc-router"]["version"] == "tinc 1.0.36 router mode"
    assert doc["tinc-switch"]["version"] == "tinc 1.0.36 switch mode"
    assert doc["tinc-switch"]["mode"] == "tap" and doc["tinc-router"]["mode"] == "tun"
    for contender in doc.values():
        assert contender["status"] == "ok", contender["notes"]
        assert contender["figures"]["tcp_1_stream_bps"] > 0
        assert contender["figures"]["cpu_receiver_s_per_gbit"] > 0
    assert leftovers() == []


def test_unknown_contender_is_a_usage_error(capsys) -> None:
    assert bench.run(_args("--only", "veth,nonsense")) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "pyvpn-tap-python" in err


def test_contender_names() -> None:
    assert set(contenders.NAMES) == {
        "veth", "pyvpn-tun-native", "pyvpn-tap-native", "pyvpn-tun-python", "pyvpn-tap-python",
        "wireguard-go", "wireguard-go-trixie", "wireguard-go-bookworm", "python-floor",
        "openvpn-tun", "openvpn-tap", "nebula", "tinc-router", "tinc-switch",
    }  # fmt: skip


def test_header_overhead_per_mode() -> None:
    assert header_overhead("tun") == 20 + 8 + 32
    assert header_overhead("tap") == 20 + 8 + 32 + 14
    assert header_overhead("tun", ipv6=True) == 40 + 8 + 32


# ---------------------------------------------------------------------------
# Report


def _result(name: str, mode: str, tcp: float | None, rtt: float) -> Result:
    r = Result(name, name.rsplit("-", 1)[0], mode, 60)
    r.figures.update(tcp_1_stream_bps=tcp, tcp_4_streams_bps=tcp, rtt_median_ms=rtt)
    return r


def test_report_names_the_machine_the_versions_and_each_figures_spread(tmp_path: Path) -> None:
    rounds = [_result("pyvpn-tun", "tun", tcp, 0.2) for tcp in (2e9, 4e9, 3e9)]
    for r in rounds:
        r.version = "pyvpn 0.1.0 (abc1234), native plane"
    results = [_result("veth", "raw", 20e9, 0.05), combine(rounds)]
    results[0].version = "Linux 6.1"
    settings = {"time_s": 5, "mtu": 1420, "rounds": 3, "tcp_congestion": "cubic"}
    path = report.write_report(tmp_path / "out", results, settings, "pyvpn bench --rounds 3")
    text = path.read_text()
    assert "`pyvpn bench --rounds 3`" in text
    assert f"- CPU: {report.cpu_model()}, {os.cpu_count()} cores" in text
    assert "- TCP congestion control: cubic" in text
    row = next(line for line in text.splitlines() if line.startswith("| pyvpn-tun |"))
    assert "pyvpn 0.1.0 (abc1234), native plane" in row
    assert "3.00 (2.00 to 4.00), 0.15x veth" in row  # the median, its spread, its ratio
    assert (tmp_path / "out" / "bench.png").read_bytes()[:8] == PNG_MAGIC
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert doc["machine"]["cpu_model"] == report.cpu_model()
    assert [c["version"] for c in doc["contenders"]] == ["Linux 6.1", rounds[0].version]


def test_ratios_are_relative_to_veth() -> None:
    rel = ratios([_result("veth", "raw", 10e9, 0.05), _result("x-tun", "tun", 2.5e9, 0.5)])
    assert rel["x-tun"]["tcp_1_stream_bps"] == pytest.approx(0.25)
    assert rel["x-tun"]["rtt_median_ms"] == pytest.approx(10)
    assert rel["x-tun"]["udp_64b_pps"] is None


def test_chart_with_missing_figures_is_a_png(tmp_path: Path) -> None:
    results = [
        _result("veth", "raw", 10e9, 0.05),
        _result("x-tun", "tun", 1e9, 0.4),
        _result("x-tap", "tap", None, 0.5),
    ]
    write_chart(tmp_path / "c.png", results)
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC


def test_combine_takes_each_figures_median_over_the_rounds_that_got_it() -> None:
    rounds = [
        _result("x-tun", "tun", tcp, rtt) for tcp, rtt in ((1e9, 0.4), (3e9, 0.2), (None, 9.0))
    ]
    rounds[2].notes.append("TCP, 1 stream: iperf3 failed")
    combined = combine(rounds)
    assert combined.figures["tcp_1_stream_bps"] == 2e9  # the round without it does not count
    assert combined.figures["rtt_median_ms"] == 0.4
    assert combined.figures["udp_64b_pps"] is None
    assert combined.notes == ["round 3: TCP, 1 stream: iperf3 failed"]
    assert len(combined.details["rounds"]) == 3
    assert combined.status == "partial"
    skipped = Result("y-tun", "y", "tun", 60, status="skipped", notes=["y is not installed"])
    assert combine([skipped]) is skipped


def test_settle_status() -> None:
    r = _result("x-tun", "tun", 1e9, 0.4)
    r.settle()
    assert r.status == "partial"
    r.figures.update(dict.fromkeys(FIGURE_KEYS, 1.0))
    r.status = "ok"
    r.settle()
    assert r.status == "ok"


# ---------------------------------------------------------------------------
# measure.py parsing and CPU accounting

PING_OUTPUT = """PING 10.10.0.2 (10.10.0.2) 56(84) bytes of data.
64 bytes from 10.10.0.2: icmp_seq=1 ttl=64 time=0.412 ms
64 bytes from 10.10.0.2: icmp_seq=2 ttl=64 time=0.380 ms
64 bytes from 10.10.0.2: icmp_seq=4 ttl=64 time=1.20 ms

--- 10.10.0.2 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 603ms
rtt min/avg/max/mdev = 0.380/0.664/1.200/0.379 ms
"""


def test_parse_ping() -> None:
    stats = measure.parse_ping(PING_OUTPUT)
    assert (stats.sent, stats.received) == (4, 3)
    assert stats.loss == pytest.approx(0.25)
    assert stats.median_ms == pytest.approx(0.412)
    assert stats.p99_ms == pytest.approx(1.2)


def test_parse_ping_without_replies() -> None:
    stats = measure.parse_ping("--- x ping statistics ---\n3 packets transmitted, 0 received")
    assert stats.loss == 1.0 and stats.median_ms is None and stats.p99_ms is None
    with pytest.raises(measure.MeasurementError):
        measure.parse_ping("ping: connect: Network is unreachable")


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert measure.percentile(values, 99) == 99
    assert measure.percentile(values, 50) == 50
    assert measure.percentile([7.0], 99) == 7.0


def test_parse_iperf_documents() -> None:
    tcp = {
        "end": {
            "sum_sent": {"bytes": 1000, "bits_per_second": 9e9, "retransmits": 3},
            "sum_received": {"bytes": 990, "bits_per_second": 8e9, "seconds": 1.0},
        }
    }
    result = measure.parse_iperf_tcp(tcp, streams=4)
    assert (result.bits_per_second, result.bytes, result.retransmits) == (8e9, 990, 3)
    udp = {
        "end": {
            "sum_received": {"packets": 1000, "lost_packets": 200, "seconds": 2.0},
        }
    }
    rate = measure.parse_iperf_udp(udp, payload=64)
    assert rate.packets_per_second == pytest.approx(400)
    assert rate.loss == pytest.approx(0.2)
    with pytest.raises(measure.MeasurementError, match="unable to connect"):
        measure.parse_iperf_tcp({"error": "unable to connect to server"})


def test_cpu_meter_sees_a_few_milliseconds_not_clock_ticks() -> None:
    """A flood's unicast phase costs a hub a few milliseconds: the meter must not
    round them to 0 or 10 ms, as utime + stime in clock ticks would."""
    burn = (
        "import sys, time\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "end = time.thread_time() + 0.003\n"
        "while time.thread_time() < end: pass\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "ready\n"  # past the interpreter's start
        with measure.CpuMeter([child.pid]) as meter:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "done\n"
        assert 0.003 <= meter.seconds < 0.009, meter.seconds
    finally:
        child.kill()
        child.wait()


def test_cpu_meter_counts_a_busy_child_and_its_threads() -> None:
    """Two threads of the child burn 0.3 s of CPU each (by their own clocks, so on
    any load) while its main thread waits: the meter counts both."""
    spin = (
        "import sys, threading, time\n"
        "def burn():\n"
        "    end = time.thread_time() + 0.3\n"
        "    while time.thread_time() < end: pass\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "ts = [threading.Thread(target=burn) for _ in range(2)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "ready\n"
        with measure.CpuMeter([child.pid]) as meter:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "done\n"
        assert 0.55 <= meter.seconds < 1.0, meter.seconds  # 0.6, give or take its ticks
    finally:
        child.kill()
        child.wait()
