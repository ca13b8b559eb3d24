"""`pyvpn metrics`: every running tunnel's status, read over its UAPI socket at
scrape time, as Prometheus metrics, served over HTTP by prometheus_client.

What WireGuard itself has goes out under prometheus-wireguard-exporter's names,
help texts and labels (MindFlavor/prometheus_wireguard_exporter, src/metrics.rs
and src/wireguard.rs; remote_ip and remote_port as its `-r` switch adds them), so
dashboards made for that exporter work unchanged. What only pyvpn knows goes out
as pyvpn_*."""

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from . import uapi_client

log = logging.getLogger("pyvpn")

# A scrape waits this long for a tunnel; Prometheus' own scrape timeout is 10 s.
TUNNEL_TIMEOUT = 2.0
# A tunnel's figures younger than this are reused. Its status is built on its
# event loop (0.17 s of a 2,000-peer hub's), and anyone on the host can reach
# 127.0.0.1: however many scrapes come, a tunnel builds at most one a second.
STATUS_MAX_AGE = 1.0
# prometheus-wireguard-exporter's label set for a peer, in its order (with -r).
PEER_LABELS = ["interface", "public_key", "allowed_ips", "remote_ip", "remote_port"]
PYVPN_PEER_LABELS = ["interface", "public_key"]


class ListenError(ValueError):
    pass


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) into (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ListenError(f"--listen {text}: expected HOST:PORT with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ListenError(f"--listen {text}: an IPv6 address goes in brackets, as [::1]:9586")
    if not host:
        raise ListenError(f"--listen {text}: no host (0.0.0.0 listens on all IPv4 addresses)")
    return host, int(port)


def remote(endpoint: str | None) -> tuple[str, str]:
    """(remote_ip, remote_port) of an endpoint as status gives it: "ip:port" or
    "[ip6]:port". Empty when there is none, which Prometheus takes as no label."""
    if not endpoint:
        return "", ""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), port


class Reading:
    """A tunnel's latest read and when it began; its lock is held while a read is
    under way, so scrapes that come meanwhile wait for it and take its result."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: float | None = None
        self.result: list[Metric] | Exception | None = None


class TunnelCollector(Collector):
    """Reads the tunnels at scrapes, each at most once in `max_age` seconds: one
    that is gone has no series any more; one that does not answer in time is
    pyvpn_up 0 and counted, and the others are exported as ever."""

    def __init__(
        self,
        only: Iterable[str] = (),
        timeout: float = TUNNEL_TIMEOUT,
        max_age: float = STATUS_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.only = set(only)
        self.timeout = timeout
        self.max_age = max_age
        self.clock = clock
        self.failures: Counter[str] = Counter()
        self.failing: set[str] = set()  # said in the log when they started failing
        self._readings: dict[str, Reading] = {}
        self._lock = threading.Lock()  # scrapes may come in on several threads

    def _latest(self, name: str) -> list[Metric] | Exception | None:
        """The tunnel's metrics as `_read` gives them, read anew only when the last
        read is `max_age` old; never two reads of a tunnel at once."""
        with self._lock:
            reading = self._readings.setdefault(name, Reading())
        with reading.lock:
            now = self.clock()
            # Aged from when the read began: scrapes `max_age` apart read anew
            # however long the tunnel took to answer the last one.
            if reading.at is None or now - reading.at >= self.max_age:
                reading.result = self._read(name)
                reading.at = now
            return reading.result

    def _read(self, name: str) -> list[Metric] | Exception | None:
        """The tunnel's metrics; None if it is gone since it was listed or is not
        pyvpn's, the exception if it did not answer in time or answered what we
        cannot read."""
        try:
            status = uapi_client.status(name, self.timeout)
            return [*wireguard_metrics(status), *pyvpn_metrics(status)]
        except (uapi_client.NotRunning, uapi_client.NotPyvpn):
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return e

    def collect(self) -> Iterator[Metric]:
        # Every socket, read once: a leftover one refuses and is skipped, as is one
        # of another UAPI server (wireguard-go).
        names = [n for n in uapi_client.socket_names() if not self.only or n in self.only]
        with self._lock:  # a tunnel's socket gone, its last figures go too
            for gone in self._readings.keys() - set(names):
                del self._readings[gone]
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(names)))) as pool:
            results = list(pool.map(self._latest, names))
        up = GaugeMetricFamily(
            "pyvpn_up", "1 if the tunnel answered this scrape, 0 if not", labels=["interface"]
        )
        failed = CounterMetricFamily(
            "pyvpn_scrape_errors",
            "Scrapes in which the tunnel did not answer in time or answered garbage",
            labels=["interface"],
        )
        # One family per name, every tunnel's samples in it: new families, as the
        # tunnels' own are reused by the scrapes that follow.
        merged: dict[str, Metric] = {}
        with self._lock:
            for name, result in zip(names, results, strict=True):
                if result is None:
                    continue
                if isinstance(result, Exception):
                    self.failures[name] += 1
                    if name not in self.failing:
                        log.warning("%s: no status: %s", name, result or type(result).__name__)
                        self.failing.add(name)
                else:
                    self.failing.discard(name)
                    for f in result:
                        if f.name not in merged:
                            merged[f.name] = Metric(f.name, f.documentation, f.type, f.unit)
                        merged[f.name].samples += f.samples
                up.add_metric([name], 0 if isinstance(result, Exception) else 1)
                failed.add_metric([name], self.failures[name])
        yield up
        yield failed
        yield from merged.values()


Samples = Iterable[tuple[list[str], float]]


def family(
    kind: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    documentation: str,
    labels: list[str],
    samples: Samples,
) -> Metric:
    """A metric family with its samples, checked now: a status we cannot read
    must fail while its tunnel is read (TunnelCollector._read), not the scrape."""
    metric = kind(name, documentation, labels=labels)
    for label_values, value in samples:
        if not all(isinstance(v, str) for v in label_values):
            raise TypeError(f"{name}: label values {label_values!r}")
        metric.add_metric(label_values, float(value))
    return metric


def wireguard_metrics(s: dict[str, Any]) -> Iterator[Metric]:
    """prometheus-wireguard-exporter's metrics (src/metrics.rs): its names, help
    texts and labels; the handshake as a Unix time, 0 before the first."""
    peers = []
    for p in s["peers"]:
        # `wg show dump` gives no allowed IPs as "(none)", and the exporter passes it on.
        allowed = ",".join(p["allowed_ips"]) or "(none)"
        peers.append(([s["name"], p["public_key"], allowed, *remote(p["endpoint"])], p))
    yield family(
        CounterMetricFamily,
        "wireguard_sent_bytes",
        "Bytes sent to the peer",
        PEER_LABELS,
        [(labels, p["tx_bytes"]) for labels, p in peers],
    )
    yield family(
        CounterMetricFamily,
        "wireguard_received_bytes",
        "Bytes received from the peer",
        PEER_LABELS,
        [(labels, p["rx_bytes"]) for labels, p in peers],
    )
    yield family(
        GaugeMetricFamily,
        "wireguard_latest_handshake_seconds",
        "Seconds from the last handshake",
        PEER_LABELS,
        [(labels, int(p["latest_handshake"] or 0)) for labels, p in peers],
    )
    yield family(
        GaugeMetricFamily,
        "wireguard_peers_total",
        "Total number of peers",
        ["interface"],
        [([s["name"]], len(peers))],
    )


# Per peer, from its "handshakes" in the status: (key, metric, help).
HANDSHAKE_COUNTERS = [
    (
        "initiations_sent",
        "pyvpn_peer_handshake_initiations_sent",
        "Handshake initiations sent to the peer, retries included",
    ),
    ("completed", "pyvpn_peer_handshakes", "Handshakes completed with the peer"),
    ("rekeys", "pyvpn_peer_rekeys", "Completed handshakes that replaced a session still held"),
]


def pyvpn_metrics(s: dict[str, Any]) -> Iterator[Metric]:
    """What only pyvpn knows, from the same status `pyvpn show --json` prints."""
    name, peers = s["name"], s["peers"]
    interface = ["interface"]
    info = InfoMetricFamily(
        "pyvpn_interface",
        "The tunnel's mode (tun or tap), data plane (native or python) and identity",
        labels=interface,
    )
    identity = {key: str(s[key]) for key in ("mode", "datapath", "public_key", "listen_port")}
    info.add_metric([name], identity)
    yield info
    yield family(
        GaugeMetricFamily,
        "pyvpn_under_load",
        "1 while handshake initiations come in so fast that cookies are demanded",
        interface,
        [([name], int(s["under_load"]))],
    )
    yield family(
        CounterMetricFamily,
        "pyvpn_cookie_replies_sent",
        "Cookie replies sent while under load",
        interface,
        [([name], s["cookie_replies_sent"])],
    )
    yield family(
        CounterMetricFamily,
        "pyvpn_drops",
        "Packets the interface dropped, by reason",
        ["interface", "reason"],
        [([name, reason], count) for reason, count in sorted(s["drops"].items())],
    )
    yield family(
        CounterMetricFamily,
        "pyvpn_peer_drops",
        "Packets from or for the peer that were dropped, by reason",
        [*PYVPN_PEER_LABELS, "reason"],
        [
            ([name, p["public_key"], reason], count)
            for p in peers
            for reason, count in sorted(p["drops"].items())
        ],
    )
    handshaking = [p for p in peers if "handshakes" in p]  # a daemon from before: none
    for key, metric, documentation in HANDSHAKE_COUNTERS:
        yield family(
            CounterMetricFamily,
            metric,
            documentation,
            PYVPN_PEER_LABELS,
            [([name, p["public_key"]], p["handshakes"][key]) for p in handshaking],
        )
    yield family(
        GaugeMetricFamily,
        "pyvpn_peer_session",
        "1 while the peer has a usable session",
        PYVPN_PEER_LABELS,
        [([name, p["public_key"]], int(p["has_session"])) for p in peers],
    )
    yield family(
        GaugeMetricFamily,
        "pyvpn_peer_learned_macs",
        "tap: MAC addresses learned behind the peer",
        PYVPN_PEER_LABELS,
        [([name, p["public_key"]], len(p["macs"])) for p in peers if "macs" in p],
    )
    native = s.get("native") or {}  # None on the Python plane; absent from older daemons
    yield family(
        CounterMetricFamily,
        "pyvpn_native_upcalls",
        "native plane: messages C handed up to Python",
        interface,
        [([name], native["upcalls_sent"])] if native else [],
    )
    yield family(
        CounterMetricFamily,
        "pyvpn_native_upcall_overflows",
        "native plane: messages C could not hand up to Python, its socket full",
        interface,
        [([name], native["upcalls_dropped"])] if native else [],
    )


def serve(host: str, port: int, only: Iterable[str] = ()) -> None:
    """Serve /metrics on host:port from a thread of its own, until the process
    ends. Raises socket.gaierror for a host that does not resolve, OSError for an
    address that cannot be bound (taken, not local)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TunnelCollector(only))
    start_http_server(port, addr=host, registry=registry)
