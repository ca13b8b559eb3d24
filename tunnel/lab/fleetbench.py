"""`pyvpn bench --fleet N`: N fleet hosts on one machine, as an operator sizes a fleet.

A small internet of namespaces (internet.py) with etcd and coturn in it; host 0
behind a symmetric NAT, hosts 1 and 2 each behind a cone NAT of its own, the
others behind cone NATs SITE_HOSTS to a site. It measures:

- the time from the last host's start until every host has a path to every
  other (`pyvpn show --json`, each peer's fleet path known);
- the registry's load meanwhile and at rest: etcd's own counters of writes and
  of requests served, over a quiet window after the mesh is full;
- TCP throughput (iperf3, one stream) between hosts 1 and 2 (direct, at their
  mapped addresses) and between hosts 1 and 0 (relayed).

One data plane (--datapath, default native), tun mode."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from tunnel.control import uapi_client
from tunnel.control.convert import to_toml
from tunnel.protocol.address import format_address

from . import measure
from .coturn import STUN_PORT, Coturn
from .etcd import CLIENT_PORT, Etcd, etcd_problem
from .internet import SERVERS, Internet, Mapping
from .report import write_json
from .testbed import (
    Daemon,
    Namespace,
    Testbed,
    TunnelStartError,
    device_name,
    first_line,
    host_problem,
    missing_tools,
    poll_until,
    pyvpn_env,
    run_command,
    start_pyvpn,
)

SITE_HOSTS = 5
MAX_HOSTS = 50
MESH_TIMEOUT = 120.0
QUIET_WINDOW = 10.0  # seconds over which the registry's load at rest is counted
PREFIX = "/pyvpn/bench"
# etcd's counters (its /metrics): writes, and requests its gRPC server answered
# (the JSON gateway that etcd3gw speaks goes through it too).
COUNTERS = {"puts": "etcd_mvcc_put_total", "requests": "grpc_server_handled_total"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """bench's --fleet."""
    parser.add_argument(
        "--fleet",
        type=int,
        metavar="N",
        help=f"instead of the tunnel benchmark: a fleet of N hosts behind NATs (3 to "
        f"{MAX_HOSTS}; time to full mesh, registry load, relayed against direct throughput)",
    )
    parser.add_argument(
        "--datapath",
        choices=("auto", "native", "python"),
        default="native",
        help="with --fleet: the hosts' data plane (default native)",
    )


def inner(i: int) -> str:
    return f"10.90.{i // 250}.{i % 250 + 1}"


def pyvpn_in(ns: Namespace, *args: str) -> str:
    argv = ns.argv(sys.executable, "-m", "tunnel", *args)
    return run_command(argv, env=pyvpn_env(), timeout=60).stdout


def etcd_counters(ns: Namespace) -> dict[str, float]:
    """etcd's counters now, summed over their labels."""
    script = (
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
    )
    text = ns.run(sys.executable, "-c", script, f"http://{SERVERS}:{CLIENT_PORT}/metrics").stdout
    found = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        for key, metric in COUNTERS.items():
            if line.startswith(metric) and line[len(metric)] in " {":
                found[key] += float(line.rsplit(" ", 1)[1])
    return found


def meshed(names: list[str], n: int) -> bool:
    """Whether every host has a path to each of the n - 1 others."""
    for name in names:
        peers = [p for p in uapi_client.status(name)["peers"] if "fleet" in p]
        if len(peers) != n - 1 or not all(p["fleet"]["path"] for p in peers):
            return False
    return True


def measure_fleet(n: int, datapath: str, seconds: float) -> dict[str, Any]:
    with Testbed(tag="fl") as bed, tempfile.TemporaryDirectory(prefix="pyvpn-fleet-") as tmp:
        net = Internet(bed)
        server = format_address((SERVERS, STUN_PORT))
        with Etcd(net.namespace, SERVERS), Coturn(net.namespace, SERVERS) as coturn:
            directory = str(Path(tmp) / "fleet")
            relay = f"turn:{coturn.username}:{coturn.password}@{server}"
            pyvpn_in(net.namespace, "fleet", "init", directory, "--registry",
                     f"http://{SERVERS}:{CLIENT_PORT}", "--prefix", PREFIX, "--stun", server,
                     "--relay", relay)  # fmt: skip
            hosts = [net.add_site(Mapping.ENDPOINT_DEPENDENT).hosts[0]]
            hosts += [net.add_site(Mapping.ENDPOINT_INDEPENDENT).hosts[0] for _ in range(2)]
            while len(hosts) < n:
                site = net.add_site(Mapping.ENDPOINT_INDEPENDENT, min(SITE_HOSTS, n - len(hosts)))
                hosts += site.hosts
            names = [device_name("pvfl", str(i)) for i in range(n)]
            paths = []
            for i, name in enumerate(names):
                path = Path(tmp) / f"h{i}.toml"
                pyvpn_in(net.namespace, "fleet", "admit", directory, f"h{i}", "--address",
                         f"{inner(i)}/16", "--out", str(path))  # fmt: skip
                data = tomllib.loads(path.read_text())
                data["interface"] |= {"name": name, "datapath": datapath}
                path.write_text(to_toml(data))
                paths.append(path)
            daemons: list[Daemon] = []
            try:
                before = etcd_counters(net.namespace)
                started = time.monotonic()
                daemons += [start_pyvpn(ns, path) for ns, path in zip(hosts, paths, strict=True)]
                last = time.monotonic()
                if not poll_until(lambda: meshed(names, n), MESH_TIMEOUT, 0.5):
                    raise TunnelStartError(
                        f"no full mesh within {MESH_TIMEOUT:g} s", None, daemons[0].output()
                    )
                full = time.monotonic()
                mesh_load = etcd_counters(net.namespace)
                time.sleep(QUIET_WINDOW)
                rest = etcd_counters(net.namespace)
                direct = measure.iperf_tcp(hosts[1], hosts[2], inner(2), seconds)
                relayed = measure.iperf_tcp(hosts[1], hosts[0], inner(0), seconds)
            finally:
                for daemon in daemons:
                    daemon.stop()
    return {
        "hosts": n,
        "datapath": datapath,
        "start_all_s": round(last - started, 2),
        "full_mesh_s": round(full - last, 2),
        "registry_during_mesh": {k: mesh_load[k] - before[k] for k in COUNTERS},
        "registry_per_s_at_rest": {
            k: round((rest[k] - mesh_load[k]) / QUIET_WINDOW, 2) for k in COUNTERS
        },
        "direct_gbps": round(direct.bits_per_second / 1e9, 3),
        "relayed_gbps": round(relayed.bits_per_second / 1e9, 3),
    }


def render(result: dict[str, Any]) -> str:
    during, rest = result["registry_during_mesh"], result["registry_per_s_at_rest"]
    lines = [
        f"| fleet of {result['hosts']} ({result['datapath']}) | |",
        "|---|---|",
        f"| all hosts started in | {result['start_all_s']} s |",
        f"| full mesh, from the last start | {result['full_mesh_s']} s |",
        f"| etcd writes / requests, start to mesh | {during['puts']:g} / {during['requests']:g} |",
        f"| etcd writes / requests per s at rest | {rest['puts']:g} / {rest['requests']:g} |",
        f"| TCP, direct (cone to cone) | {result['direct_gbps']} Gbit/s |",
        f"| TCP, relayed (cone to symmetric) | {result['relayed_gbps']} Gbit/s |",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not 3 <= args.fleet <= MAX_HOSTS:
        print(f"pyvpn bench: --fleet takes 3 to {MAX_HOSTS} hosts", file=sys.stderr)
        return 2
    problem = host_problem() or etcd_problem() or missing_tools(("turnserver", "nft", "conntrack"))
    if problem:
        print(f"pyvpn bench: {problem}", file=sys.stderr)
        return 1
    try:
        result = measure_fleet(args.fleet, args.datapath, args.time)
    except (*measure.EXPECTED_ERRORS, OSError) as e:
        print(f"pyvpn bench: {first_line(e)}", file=sys.stderr)
        return 1
    print(render(result))
    if args.json:
        write_json(args.json, result)
    return 0
