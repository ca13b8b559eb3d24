"""Measurements between two namespaces: ping RTT, iperf3 TCP and UDP, CPU time of processes.

The one place that runs and parses ping and iperf3, for `pyvpn demo` and `pyvpn bench`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .testbed import CommandError, Namespace, TunnelStartError, children, proc_stat, stop_process

IPERF_PORT = 5201
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_RTT = re.compile(r"\btime[=<]([\d.]+) ms")
_TRANSMITTED = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


class MeasurementError(RuntimeError):
    """A measurement that produced no figure (tool failed, nothing got through)."""


# What a failing tool or tunnel raises; anything else is a bug and propagates.
EXPECTED_ERRORS = (MeasurementError, CommandError, TunnelStartError, TimeoutError)


# ---------------------------------------------------------------------------
# ping


@dataclass(frozen=True)
class PingStats:
    sent: int
    received: int
    rtts_ms: tuple[float, ...]

    @property
    def loss(self) -> float:
        """Fraction of echo requests without a reply (0.0 .. 1.0)."""
        return 1.0 - self.received / self.sent if self.sent else 1.0

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.rtts_ms) if self.rtts_ms else None

    @property
    def p99_ms(self) -> float | None:
        return percentile(self.rtts_ms, 99) if self.rtts_ms else None


def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile: an RTT that was really observed, never an interpolation."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def parse_ping(text: str) -> PingStats:
    rtts = tuple(float(m) for m in _RTT.findall(text))
    summary = _TRANSMITTED.search(text)
    if summary is None:
        raise MeasurementError(f"no ping summary in output: {text.strip()[-200:]!r}")
    return PingStats(int(summary.group(1)), int(summary.group(2)), rtts)


def ping(
    ns: Namespace, dst: str, count: int = 10, interval: float = 0.2, size: int | None = None
) -> PingStats:
    """`ping -c COUNT -i INTERVAL DST` from `ns`; losses are figures, not errors."""
    argv = ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1"]
    if size is not None:
        argv += ["-s", str(size)]
    # Exit status 1 means "some replies missing": that is what PingStats.loss reports.
    done = ns.run(*argv, dst, check=False, timeout=count * interval + 10)
    if done.returncode not in (0, 1):
        raise MeasurementError(f"ping {dst} from {ns.name} failed: {done.stderr.strip()}")
    return parse_ping(done.stdout)


# ---------------------------------------------------------------------------
# iperf3

# TCP congestion control moves the ceiling a great deal: on our machines raw veth
# ran 15 Gbit/s under bbr and 37 under cubic. New namespaces take the host's.
CONGESTION = "/proc/sys/net/ipv4/tcp_congestion_control"
CONGESTION_AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"


def host_congestion() -> str:
    try:
        with open(CONGESTION) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def check_congestion(name: str) -> None:
    """ValueError unless TCP can use congestion control `name` here. Setting it on a
    socket, as iperf3 -C does, also loads its module (tcp_NAME) for root, which the
    list of available ones does not show until then."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
        except OSError:
            try:
                with open(CONGESTION_AVAILABLE) as f:
                    available = ", ".join(f.read().split())
            except OSError:
                available = "unknown"
            raise ValueError(
                f"--congestion {name} is not available here (available: {available})"
            ) from None


@dataclass(frozen=True)
class TcpResult:
    bits_per_second: float  # as the receiver counted it
    bytes: int
    seconds: float
    streams: int
    retransmits: int | None
    congestion: str  # the sender's TCP congestion control, as iperf3 reports it


@dataclass(frozen=True)
class UdpResult:
    packets_per_second: float  # received
    packets_sent: int
    packets_lost: int
    seconds: float
    payload: int

    @property
    def loss(self) -> float:
        return self.packets_lost / self.packets_sent if self.packets_sent else 1.0


def parse_iperf_tcp(doc: dict[str, Any], streams: int = 1) -> TcpResult:
    _raise_iperf_error(doc)
    received, sent = doc["end"]["sum_received"], doc["end"]["sum_sent"]
    return TcpResult(
        bits_per_second=float(received["bits_per_second"]),
        bytes=int(received["bytes"]),
        seconds=float(received["seconds"]),
        streams=streams,
        retransmits=sent.get("retransmits"),
        congestion=doc["end"].get("sender_tcp_congestion", ""),
    )


def parse_iperf_udp(doc: dict[str, Any], payload: int) -> UdpResult:
    _raise_iperf_error(doc)
    # sum_received holds the server's count; iperf3 reports lost by sequence gaps.
    end = doc["end"]
    received = end.get("sum_received") or end["sum"]
    packets, lost = int(received["packets"]), int(received["lost_packets"])
    seconds = float(received["seconds"]) or 1e-9
    return UdpResult(
        packets_per_second=(packets - lost) / seconds,
        packets_sent=packets,
        packets_lost=lost,
        seconds=seconds,
        payload=payload,
    )


def _raise_iperf_error(doc: dict[str, Any]) -> None:
    if "error" in doc:
        raise MeasurementError(f"iperf3: {doc['error']}")


def _listening(ns: Namespace, port: int) -> bool:
    done = ns.run("ss", "-Hltn", f"sport = :{port}", check=False)
    return bool(done.stdout.strip())


@contextlib.contextmanager
def iperf_server(ns: Namespace, port: int = IPERF_PORT, timeout: float = 5.0) -> Iterator[None]:
    """A one-off `iperf3 -s -1` in `ns`, listening before the body runs, gone after it."""
    proc = ns.popen(
        "iperf3", "-s", "-1", "-p", str(port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + timeout
        while not _listening(ns, port):
            if proc.poll() is not None:
                raise MeasurementError(f"iperf3 server in {ns.name} exited: {_stderr(proc)}")
            if time.monotonic() > deadline:
                raise MeasurementError(f"iperf3 server in {ns.name} not listening on {port}")
            time.sleep(0.02)
        yield
    finally:
        stop_process(proc, grace=2.0)
        if proc.stderr is not None:
            proc.stderr.close()


def _stderr(proc: subprocess.Popen[Any]) -> str:
    return proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""


def iperf_client(
    client: Namespace,
    server: Namespace,
    server_addr: str,
    args: list[str],
    seconds: float,
    port: int = IPERF_PORT,
) -> dict[str, Any]:
    """Run one iperf3 test from `client` to a fresh server in `server`; the parsed JSON."""
    with iperf_server(server, port):
        argv = ["iperf3", "-c", server_addr, "-p", str(port), "-t", f"{seconds:g}", "-J"]
        argv += ["--connect-timeout", "3000", *args]
        try:
            done = client.run(*argv, check=False, timeout=seconds + 20)
        except CommandError as exc:
            raise MeasurementError(str(exc)) from None
    try:
        doc: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise MeasurementError(
            f"iperf3 to {server_addr} printed no JSON: {(done.stderr or done.stdout).strip()}"
        ) from None
    _raise_iperf_error(doc)
    return doc


def iperf_tcp(
    client: Namespace,
    server: Namespace,
    server_addr: str,
    seconds: float = 2.0,
    streams: int = 1,
    congestion: str | None = None,
) -> TcpResult:
    """`congestion`: the TCP congestion control to use (iperf3 -C); None keeps the
    namespace's default."""
    args = ["-P", str(streams)] + (["-C", congestion] if congestion else [])
    return parse_iperf_tcp(iperf_client(client, server, server_addr, args, seconds), streams)


def iperf_udp(
    client: Namespace,
    server: Namespace,
    server_addr: str,
    seconds: float = 2.0,
    payload: int = 64,
    bitrate: str = "2G",
) -> UdpResult:
    """Small-packet rate: offer far more than any tunnel carries, count what arrives."""
    args = ["-u", "-l", str(payload), "-b", bitrate]
    return parse_iperf_udp(iperf_client(client, server, server_addr, args, seconds), payload)


# ---------------------------------------------------------------------------
# CPU time


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process: the kernel sums them over all its threads, live and exited."""
    fields = proc_stat(pid)  # fields[0] is field 3 (state) of proc(5)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def descendants(pid: int) -> list[int]:
    """The pid and every live process below it (helpers, worker processes)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children(current)
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # a process that has gone counts as nothing more
            total += process_cpu_seconds(pid)
    return total


def thread_run_ns(pid: int) -> dict[int, int]:
    """Each live thread's time on a CPU in ns (/proc/PID/task/TID/schedstat): finer
    than utime + stime, which come in clock ticks (10 ms), but blind to threads
    that have exited."""
    found = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, ValueError, IndexError),
                open(f"/proc/{pid}/task/{task}/schedstat") as f,
            ):
                found[int(task)] = int(f.read().split()[0])
    return found


@dataclass
class _Sample:
    ticks: float
    threads: dict[int, int]


def _sample(pids: list[int]) -> _Sample:
    threads: dict[int, int] = {}
    for pid in pids:
        threads.update(thread_run_ns(pid))
    return _Sample(cpu_seconds(pids), threads)


def _used(start: _Sample, end: _Sample) -> float:
    """CPU seconds between two samples: to the nanosecond where the threads seen
    account for it all, else in clock ticks. Threads that exited in between, or
    were born and exited, show only in the ticks: these then exceed the threads'
    sum by more than their rounding (under a tick in utime and one in stime)."""
    ticks = end.ticks - start.ticks
    if start.threads.keys() <= end.threads.keys():
        precise = (sum(end.threads.values()) - sum(start.threads.values())) / 1e9
        if ticks <= precise + 2 / _CLK_TCK:
            return precise
    return ticks


@dataclass
class CpuMeter:
    """CPU seconds the given processes (and their descendants) use inside a `with`
    block: each one's in `per_pid`, in the order given, and their sum. A short
    block's figure is not rounded to clock ticks (a flood's few milliseconds)."""

    pids: list[int]
    seconds: float = 0.0
    per_pid: list[float] = field(default_factory=list)
    _tracked: list[list[int]] = field(default_factory=list)
    _start: list[_Sample] = field(default_factory=list)

    def __enter__(self) -> CpuMeter:
        self._tracked = [descendants(pid) for pid in self.pids]
        self._start = [_sample(tracked) for tracked in self._tracked]
        return self

    def __exit__(self, *exc: object) -> None:
        self.per_pid = [
            _used(start, _sample(tracked))
            for tracked, start in zip(self._tracked, self._start, strict=True)
        ]
        self.seconds = sum(self.per_pid)
