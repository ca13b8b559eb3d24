"""`pyvpn metrics` against real tunnels between namespaces: the exposition read
over plain HTTP, a real Prometheus server scraping it, and the error cases."""

import json
import socket
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from tunnel.control.metrics import TunnelCollector
from tunnel.lab.testbed import (
    INNER_A,
    INNER_B,
    WG_RUN_DIR,
    Daemon,
    Namespace,
    device_name,
    pyvpn_env,
    pyvpn_status,
    start_daemon,
    start_pyvpn,
    start_wireguard_go,
    wait_for,
    wait_reachable,
    write_pair_configs,
)
from tunnel.protocol import keys

from ..conftest import pyvpn
from ..traffic import tcp_transfer
from ..waiting import wait_until

PROMETHEUS = Path("/usr/bin/prometheus")
EXPORTER = "127.0.0.1:9586"

# An HTTP GET from inside a namespace, where the exporter and Prometheus listen.
GET = textwrap.dedent("""
    import sys, urllib.request
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
            sys.stdout.write(r.read().decode())
    except OSError as e:
        sys.exit(f"{e}")
""")


def http_get(ns: Namespace, url: str) -> str | None:
    done = ns.run(sys.executable, "-c", GET, url, check=False, timeout=20)
    if done.returncode != 0:
        print(f"GET {url}: {done.stderr.strip()}")  # shown if the test fails
        return None
    return done.stdout


def start_exporter(ns: Namespace, *args: str) -> Daemon:
    exporter = start_daemon(
        ns,
        [sys.executable, "-m", "tunnel", "metrics", "--listen", EXPORTER, *args],
        "metrics",
        pyvpn_env(),
        label="pyvpn metrics",
    )
    wait_for(exporter, lambda: scrape(ns) is not None, "/metrics answering", timeout=15)
    return exporter


def scrape(ns: Namespace) -> dict[str, Any] | None:
    """/metrics parsed: {family name: (type, [(sample name, labels, value)...])}."""
    text = http_get(ns, f"http://{EXPORTER}/metrics")
    return None if text is None else parse(text)


def parse(text: str) -> dict[str, Any]:
    return {
        f.name: (f.type, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(text)
    }


def samples(families: dict[str, Any], name: str, **labels: str) -> list[tuple[dict, float]]:
    """The samples of `name` (a sample name) whose labels include `labels`."""
    return [
        (sample_labels, value)
        for _, family in families.values()
        for sample_name, sample_labels, value in family
        if sample_name == name and labels.items() <= sample_labels.items()
    ]


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    found = samples(families, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return found[0][1]


def test_exposition_has_the_wireguard_exporter_names_and_pyvpn_figures(bed, tmp_path, datapath):
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath)
    with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b) as b:
        wait_reachable(bed.a, INNER_B)
        tcp_transfer(bed.a, bed.b, INNER_A, 256 << 10)
        status = pyvpn_status(a.name)
        peer_key = status["peers"][0]["public_key"]
        with start_exporter(bed.a):
            m = scrape(bed.a)
            assert m is not None
            # prometheus-wireguard-exporter's names, types and labels (with -r).
            peer = {
                "interface": a.name,
                "public_key": peer_key,
                "allowed_ips": "10.10.0.2/32,fd10::2/128",
                "remote_ip": "198.18.0.2",
                "remote_port": "51820",
            }
            assert m["wireguard_sent_bytes"][0] == "counter"
            assert m["wireguard_received_bytes"][0] == "counter"
            assert m["wireguard_latest_handshake_seconds"][0] == "gauge"
            [(labels, received)] = samples(m, "wireguard_received_bytes_total", interface=a.name)
            assert labels == peer and received >= 256 << 10
            assert value(m, "wireguard_sent_bytes_total", **peer) > 0
            handshake = value(m, "wireguard_latest_handshake_seconds", **peer)
            assert abs(handshake - time.time()) < 60
            assert value(m, "wireguard_peers_total", interface=a.name) == 1
            # pyvpn's own.
            # An info-style gauge (the classic text format has no info type).
            assert m["pyvpn_interface_info"][0] == "gauge"
            info = value(m, "pyvpn_interface_info", interface=a.name, mode="tun", datapath=datapath)
            assert info == 1
            assert value(m, "pyvpn_up", interface=a.name) == 1
            assert value(m, "pyvpn_scrape_errors_total", interface=a.name) == 0
            assert value(m, "pyvpn_under_load", interface=a.name) == 0
            assert m["pyvpn_peer_handshakes"][0] == "counter"
            assert value(m, "pyvpn_peer_handshakes_total", interface=a.name) >= 1
            assert value(m, "pyvpn_peer_rekeys_total", interface=a.name) == 0
            assert value(m, "pyvpn_peer_session", interface=a.name) == 1
            reasons = {
                labels["reason"]
                for labels, _ in samples(m, "pyvpn_peer_drops_total", interface=a.name)
            }
            assert reasons == set(status["peers"][0]["drops"])
            upcalls = samples(m, "pyvpn_native_upcall_overflows_total", interface=a.name)
            assert upcalls == ([] if datapath == "python" else [({"interface": a.name}, 0)])
            assert not samples(m, "pyvpn_peer_learned_macs", interface=a.name)  # tap only
            # Both ends' sockets are in /var/run/wireguard: B is there too, until it stops.
            assert value(m, "pyvpn_up", interface=b.name) == 1
            b.stop()
            m = scrape(bed.a)
            assert m is not None and not samples(m, "pyvpn_up", interface=b.name)
            assert not samples(m, "wireguard_received_bytes_total", interface=b.name)
            assert value(m, "pyvpn_up", interface=a.name) == 1


def test_tap_peers_report_their_learned_macs(bed, tmp_path):
    path_a, path_b = write_pair_configs(tmp_path, "tap")
    with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b):
        wait_reachable(bed.a, INNER_B)
        with start_exporter(bed.a, "--interface", a.name):
            m = scrape(bed.a)
            assert m is not None
            assert value(m, "pyvpn_interface_info", interface=a.name, mode="tap") == 1
            assert value(m, "pyvpn_peer_learned_macs", interface=a.name) == 1


@pytest.mark.xdist_group("machine-wide")  # every tunnel's socket, /etc: one such test at a time
def test_a_hung_tunnel_is_counted_and_the_others_still_exported(bed, tmp_path):
    """A socket that takes connections and never answers, as a stuck daemon's
    does (the first one waits in its backlog of one, the later ones find it
    full); one a killed daemon left behind, which refuses: no tunnel at all; and
    wireguard-go's, which is not pyvpn's."""
    hung, dead, wg = device_name("pvhung", "h"), device_name("pvdead", "d"), device_name("wg", "w")
    path_a, _ = write_pair_configs(tmp_path)
    WG_RUN_DIR.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(WG_RUN_DIR / f"{hung}.sock"))
        listener.listen(0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as leftover:
            leftover.bind(str(WG_RUN_DIR / f"{dead}.sock"))
        with (
            start_wireguard_go(bed.b, wg, keys.generate_private_key(), 51821),
            start_pyvpn(bed.a, path_a) as a,
            start_exporter(bed.a) as exporter,
        ):
            counted = []
            for _ in range(2):
                m = scrape(bed.a)
                assert m is not None
                assert value(m, "pyvpn_up", interface=hung) == 0
                counted.append(value(m, "pyvpn_scrape_errors_total", interface=hung))
                assert not samples(m, "wireguard_peers_total", interface=hung)
                assert value(m, "pyvpn_up", interface=a.name) == 1
                assert value(m, "wireguard_peers_total", interface=a.name) == 1
                assert not samples(m, "pyvpn_up", interface=dead)
                assert not samples(m, "pyvpn_up", interface=wg)
            assert counted[0] >= 1 and counted[1] == counted[0] + 1
            shown = pyvpn("show", hung)
            assert shown.returncode == 1
            path = WG_RUN_DIR / f"{hung}.sock"
            assert shown.stderr == f"pyvpn: the tunnel at {path} does not answer\n"
        said = [line for line in exporter.output().splitlines() if hung in line]
        assert len(said) == 1, said  # in its log once, not at each scrape
    finally:
        listener.close()
        for name in (hung, dead):
            (WG_RUN_DIR / f"{name}.sock").unlink(missing_ok=True)


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: pyvpn
    static_configs:
      - targets: ["{target}"]
"""


def start_prometheus(ns: Namespace, directory: Path) -> tuple[Daemon, str]:
    """Prometheus from Debian's package, run by hand in `ns` (never the package's
    own service), with its config and storage in `directory`."""
    assert PROMETHEUS.exists(), f"no {PROMETHEUS}: scripts/setup installs Debian's prometheus"
    config = directory / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(target=EXPORTER))
    web = "127.0.0.1:9090"
    daemon = start_daemon(
        ns,
        [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={web}",
        ],
        "prometheus",
    )
    wait_for(daemon, lambda: http_get(ns, f"http://{web}/-/ready") is not None, "ready", 30)
    return daemon, web


def query(ns: Namespace, web: str, promql: str) -> list[dict[str, Any]]:
    url = f"http://{web}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    text = http_get(ns, url)
    if text is None:
        return []
    reply = json.loads(text)
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def test_prometheus_sees_the_received_bytes_grow(bed, tmp_path):
    path_a, path_b = write_pair_configs(tmp_path)
    with (
        tempfile.TemporaryDirectory(prefix="pyvpn-prometheus-") as storage,
        start_pyvpn(bed.a, path_a) as a,
        start_pyvpn(bed.b, path_b),
        start_exporter(bed.a, "--interface", a.name),
    ):
        prometheus, web = start_prometheus(bed.a, Path(storage))
        with prometheus:
            peer_key = pyvpn_status(a.name)["peers"][0]["public_key"]
            promql = (
                f'wireguard_received_bytes_total{{interface="{a.name}",public_key="{peer_key}"}}'
            )
            wait_reachable(bed.a, INNER_B)
            tcp_transfer(bed.a, bed.b, INNER_A, 256 << 10)

            def received(more_than: float) -> float | None:
                result = query(bed.a, web, promql)
                figure = float(result[0]["value"][1]) if result else 0.0
                return figure if figure > more_than else None

            first = wait_until(
                lambda: received(256 << 10), "scrape of the first transfer", poll=0.2
            )
            tcp_transfer(bed.a, bed.b, INNER_A, 512 << 10)
            second = wait_until(
                lambda: received(first + (512 << 10)), "scrape of the second one", poll=0.2
            )
            assert second > first
            [series] = query(bed.a, web, promql)
            assert series["metric"]["job"] == "pyvpn"
            assert series["metric"]["remote_ip"] == "198.18.0.2"


@pytest.mark.parametrize(
    "listen, problem",
    [
        ("9586", "expected HOST:PORT"),
        ("127.0.0.1:99999", "expected HOST:PORT"),
        ("127.0.0.1:http", "expected HOST:PORT"),
        ("::1:9586", "an IPv6 address goes in brackets"),
        (":9586", "no host"),
    ],
)
def test_bad_listen_is_one_line_exit_2(listen, problem):
    done = pyvpn("metrics", "--listen", listen)
    assert done.returncode == 2
    assert done.stderr.startswith(f"pyvpn: --listen {listen}: {problem}")
    assert done.stderr.count("\n") == 1


def test_taken_port_is_one_line_exit_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        done = pyvpn("metrics", "--listen", listen)
    assert done.returncode == 1
    assert done.stderr == f"pyvpn: cannot listen on {listen}: Address already in use\n"


@pytest.mark.serial  # timers at 1/20: a stalled machine stretches a 0.25 s REKEY_TIMEOUT
def test_rekeys_are_counted_on_the_native_plane(bed, tmp_path, monkeypatch):
    """C owns the keypair slots there: a rekey is what replaced a session it held."""
    monkeypatch.setenv("PYVPN_TIMER_SCALE", "0.05")  # REKEY_AFTER_TIME 6 s; both ends
    path_a, path_b = write_pair_configs(tmp_path, "tun", "native")
    with (
        start_pyvpn(bed.a, path_a) as a,
        start_pyvpn(bed.b, path_b) as b,
        start_exporter(bed.a, "--interface", a.name, "--interface", b.name),
    ):
        wait_reachable(bed.a, INNER_B)

        def rekeyed() -> bool:
            bed.a.run("ping", "-q", "-c", "5", "-i", "0.2", INNER_B, check=False)
            m = scrape(bed.a)
            return m is not None and all(
                value(m, "pyvpn_peer_rekeys_total", interface=name) >= 1
                for name in (a.name, b.name)
            )

        wait_until(rekeyed, "rekey on both ends", timeout=30, poll=0.2)
        m = scrape(bed.a)
        assert m is not None
        for name in (a.name, b.name):
            handshakes = value(m, "pyvpn_peer_handshakes_total", interface=name)
            assert handshakes == value(m, "pyvpn_peer_rekeys_total", interface=name) + 1
            assert value(m, "pyvpn_peer_session", interface=name) == 1


class FakeTunnel:
    """A tunnel's UAPI socket that counts the statuses asked of it; each one
    reports received bytes of 1000 times its number. The first is held until
    `release` is set, as a hub's event loop takes its time to build one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = WG_RUN_DIR / f"{name}.sock"
        self.asked = 0
        self.asked_first = threading.Event()
        self.release = threading.Event()
        WG_RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(64)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                request = b""
                while not request.endswith(b"\n\n") and (chunk := conn.recv(4096)):
                    request += chunk
                if request != b"get=pyvpn\n\n":
                    continue  # given up on, or not a status request: not counted
                self.asked += 1
                self.asked_first.set()
                self.release.wait()
                conn.sendall(f"json={json.dumps(self.status())}\nerrno=0\n\n".encode())

    def status(self) -> dict[str, Any]:
        peer = {
            "public_key": "peer",
            "endpoint": None,
            "allowed_ips": [],
            "latest_handshake": None,
            "rx_bytes": 1000 * self.asked,
            "tx_bytes": 0,
            "drops": {},
            "has_session": False,
        }
        return {
            "name": self.name,
            "mode": "tun",
            "datapath": "python",
            "public_key": "me",
            "listen_port": 51820,
            "under_load": False,
            "cookie_replies_sent": 0,
            "drops": {},
            "native": None,
            "peers": [peer],
        }

    def close(self) -> None:
        self.release.set()
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()
        self.thread.join(5)
        self.path.unlink(missing_ok=True)


@pytest.mark.xdist_group("machine-wide")  # every tunnel's socket, /etc: one such test at a time
def test_concurrent_scrapes_cost_each_tunnel_one_status_per_interval():
    """Eight scrapes at once, while the tunnels build their first status, and
    one more within the interval: one status each. The next scrape after the
    interval reads them anew."""
    now = [0.0]
    tunnels = [FakeTunnel(device_name("pvfake", side)) for side in "ab"]
    try:
        registry = CollectorRegistry(auto_describe=False)
        only = [t.name for t in tunnels]
        registry.register(TunnelCollector(only, max_age=1.0, clock=lambda: now[0]))

        def received() -> dict[str, list[float]]:
            """Each tunnel's wireguard_received_bytes_total samples, as a scrape has them."""
            m = parse(generate_latest(registry).decode())
            return {
                t.name: [
                    v for _, v in samples(m, "wireguard_received_bytes_total", interface=t.name)
                ]
                for t in tunnels
            }

        with ThreadPoolExecutor(max_workers=8) as pool:
            scrapes = [pool.submit(received) for _ in range(8)]
            for t in tunnels:
                assert t.asked_first.wait(10)
            time.sleep(0.5)  # the other scrapes come meanwhile
            for t in tunnels:
                t.release.set()
            together = [s.result() for s in scrapes]
        assert [t.asked for t in tunnels] == [1, 1]
        assert together == [{t.name: [1000.0] for t in tunnels}] * 8
        now[0] = 0.9
        assert received() == {t.name: [1000.0] for t in tunnels}
        assert [t.asked for t in tunnels] == [1, 1]
        now[0] = 2.0
        assert received() == {t.name: [2000.0] for t in tunnels}
        assert [t.asked for t in tunnels] == [2, 2]
    finally:
        for t in tunnels:
            t.close()
