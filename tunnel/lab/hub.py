"""`pyvpn bench --hub N`: a hub with N peers, as an operator sizes one.

One namespace holds an interface with address 10.128.0.1/16 and N peers, each
with one /32 inside that /16 and no endpoint (a hub answers; its peers call in).
For each data plane it measures how long `pyvpn up` takes until `wg show`
answers, how long `pyvpn show`, `pyvpn show --json` and `wg show dump` take,
the process's resident memory with N peers and with none (so the cost of a
peer), and the handshake capacity (handshakes.py) against wireguard-go
configured with the same N peers over UAPI, in the same run."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunnel.protocol import keys

from .testbed import (
    DEFAULT_PREFIX,
    CommandError,
    Daemon,
    Namespace,
    TunnelStartError,
    device_name,
    pyvpn_env,
    render_config,
    run_command,
    start_pyvpn,
    start_wireguard_go,
    wait_for,
    wireguard_go_version,
)

HUB_ADDRESS = ipaddress.ip_interface("10.128.0.1/16")
# Peers whose allowed IPs lie outside the hub's prefix: each needs a route of its own.
OUTSIDE = ipaddress.ip_network("10.129.0.0/16")
HUB_PORT = 51820
PLANES = ("native", "python")
UP_TIMEOUT = 300.0
TIMED_RUNS = 3  # each command's figure is the best of these


@dataclass
class Hub:
    """A hub config on disk and the keys of its peers (for the handshake load)."""

    path: Path
    name: str
    private_key: bytes
    peer_keys: list[bytes]

    @property
    def public_key(self) -> bytes:
        return keys.public_key(self.private_key)


def peer_network(i: int, base: ipaddress.IPv4Network = HUB_ADDRESS.network) -> str:
    """Peer i's /32: 10.128.0.2 on, skipping the hub's own .1."""
    return f"{base.network_address + 2 + i}/32"


def write_hub(
    directory: str | os.PathLike[str],
    name: str,
    n: int,
    datapath: str = "auto",
    outside: int = 0,
) -> Hub:
    """The hub's TOML config: n peers inside its /16, `outside` more outside it."""
    private = keys.generate_private_key()
    peer_keys = [keys.generate_private_key() for _ in range(n + outside)]
    interface = {
        "name": name,
        "private_key": keys.encode(private),
        "listen_port": HUB_PORT,
        "address": [str(HUB_ADDRESS)],
        "datapath": datapath,
    }
    peers = [
        {
            "public_key": keys.encode(keys.public_key(k)),
            "allowed_ips": [peer_network(i) if i < n else peer_network(i - n, OUTSIDE)],
        }
        for i, k in enumerate(peer_keys)
    ]
    path = Path(directory) / f"{name}.toml"
    path.write_text(render_config(interface, peers))
    path.chmod(0o600)
    return Hub(path, name, private, peer_keys)


def write_keys(path: Path, private_keys: list[bytes]) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(keys.encode(k) + "\n" for k in private_keys)
    return path


@contextlib.contextmanager
def namespace(tag: str) -> Iterator[Namespace]:
    """A namespace of its own, named as the testbed names them (so the test suite's
    sweep of crashed runs finds it)."""
    ns = Namespace(f"{DEFAULT_PREFIX}-{os.getpid()}-{tag}")
    try:
        yield ns.create()
    finally:
        ns.delete()


def wg_show_answers(name: str) -> bool:
    done = run_command(["wg", "show", name], check=False, timeout=60)
    return done.returncode == 0


def start_hub(ns: Namespace, hub: Hub) -> tuple[Daemon, float]:
    """`pyvpn up` the hub; returns it and the seconds until `wg show` answered."""
    started = time.monotonic()
    daemon = start_pyvpn(ns, hub.path, UP_TIMEOUT)
    wait_for(daemon, lambda: wg_show_answers(hub.name), "wg show answered", UP_TIMEOUT, 0.1)
    return daemon, time.monotonic() - started


def start_wireguard_go_hub(ns: Namespace, hub: Hub, directory: Path) -> Daemon:
    """wireguard-go (the current build) with the hub's key and address, and its peers added
    over UAPI (`wg addconf`); the /16 routes every peer, as it does for pyvpn."""
    daemon = start_wireguard_go(ns, hub.name, hub.private_key, HUB_PORT, (), [str(HUB_ADDRESS)])
    try:
        lines = []
        for i, k in enumerate(hub.peer_keys):
            lines += ["[Peer]", f"PublicKey = {keys.encode(keys.public_key(k))}"]
            lines.append(f"AllowedIPs = {peer_network(i)}")
        conf = directory / f"{hub.name}-wg.conf"
        conf.write_text("\n".join(lines) + "\n")
        ns.run("wg", "addconf", hub.name, str(conf), timeout=120)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def best_time(argv: list[str], env: dict[str, str] | None = None) -> float:
    """The fastest of TIMED_RUNS runs of a command, in seconds (it must succeed)."""
    times = []
    for _ in range(TIMED_RUNS):
        started = time.monotonic()
        run_command(argv, timeout=120, env=env)
        times.append(time.monotonic() - started)
    return min(times)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def shown_peers(name: str) -> int:
    """How many peers `wg show dump` lists (every line but the interface's)."""
    done = run_command(["wg", "show", name, "dump"], timeout=60)
    return len(done.stdout.splitlines()) - 1


def handshake_capacity(
    ns: Namespace, daemon: Daemon, hub: Hub, directory: Path, count: int, window: int
) -> dict[str, Any]:
    """handshakes.py against the running hub, with the hub's CPU time per answer."""
    key_file = write_keys(directory / f"{hub.name}-initiators", hub.peer_keys)
    argv = [sys.executable, "-m", "tunnel.lab.handshakes", "--target", f"127.0.0.1:{HUB_PORT}"]
    argv += ["--responder", keys.encode(hub.public_key), "--keys", str(key_file)]
    argv += ["--count", str(count), "--window", str(window)]
    cpu_before = cpu_seconds(daemon.pid)
    children_before = _children_cpu()
    done = ns.run(*argv, timeout=600)
    result: dict[str, Any] = json.loads(done.stdout)
    cpu = cpu_seconds(daemon.pid) - cpu_before
    result["responder_cpu_seconds"] = round(cpu, 2)
    # Its making of the initiations and checking of the answers included: if the
    # responder had CPU to spare, the machine's cores were the limit, not it.
    result["initiator_cpu_seconds"] = round(_children_cpu() - children_before, 2)
    if result["valid_responses"]:
        result["responder_cpu_us_per_response"] = round(cpu / result["valid_responses"] * 1e6)
    return result


def measure_plane(
    n: int, datapath: str, directory: Path, handshakes: int, window: int
) -> dict[str, Any]:
    name = device_name("pvhub", datapath[0])
    figures: dict[str, Any] = {"plane": datapath, "peers": n}
    with namespace(f"hub{datapath[0]}") as ns:
        empty = write_hub(directory, name, 0, datapath)
        with start_hub(ns, empty)[0] as daemon:
            figures["rss_empty_kib"] = rss_kib(daemon.pid)
        hub = write_hub(directory, name, n, datapath)
        daemon, up = start_hub(ns, hub)
        with daemon:
            figures["up_s"] = round(up, 2)
            figures["rss_kib"] = rss_kib(daemon.pid)
            figures["rss_per_peer_b"] = round(
                (figures["rss_kib"] - figures["rss_empty_kib"]) * 1024 / max(n, 1)
            )
            pyvpn = [sys.executable, "-m", "tunnel", "show", name]
            figures["pyvpn_show_s"] = round(best_time(pyvpn, pyvpn_env()), 3)
            figures["pyvpn_show_json_s"] = round(best_time([*pyvpn, "--json"], pyvpn_env()), 3)
            figures["wg_show_dump_s"] = round(best_time(["wg", "show", name, "dump"]), 3)
            figures["routes"] = len(ns.run("ip", "route", "show", "dev", name).stdout.splitlines())
            figures["wg_show_peers"] = shown_peers(name)
            if handshakes:
                figures["handshakes"] = handshake_capacity(
                    ns, daemon, hub, directory, handshakes, window
                )
            figures["rss_after_handshakes_kib"] = rss_kib(daemon.pid)
    return figures


def measure_wireguard_go(n: int, directory: Path, handshakes: int, window: int) -> dict[str, Any]:
    name = device_name("pvhub", "w")
    figures: dict[str, Any] = {"plane": f"wireguard-go {wireguard_go_version()}", "peers": n}
    with namespace("hubw") as ns:
        hub = write_hub(directory, name, n)
        with start_wireguard_go_hub(ns, hub, directory) as daemon:
            figures["rss_kib"] = rss_kib(daemon.pid)
            figures["wg_show_dump_s"] = round(best_time(["wg", "show", name, "dump"]), 3)
            figures["wg_show_peers"] = shown_peers(name)
            if handshakes:
                figures["handshakes"] = handshake_capacity(
                    ns, daemon, hub, directory, handshakes, window
                )
    return figures


def measure(
    n: int, planes: list[str], handshakes: int, window: int, contender: bool = True
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="pyvpn-hub-") as tmp:
        directory = Path(tmp)
        results = [measure_plane(n, p, directory, handshakes, window) for p in planes]
        if contender:
            results.append(measure_wireguard_go(n, directory, handshakes, window))
    return results


def render(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one column per plane or contender."""
    rows = [
        ("up until `wg show` answers (s)", "up_s"),
        ("`pyvpn show` (s)", "pyvpn_show_s"),
        ("`pyvpn show --json` (s)", "pyvpn_show_json_s"),
        ("`wg show dump` (s)", "wg_show_dump_s"),
        ("peers in `wg show dump`", "wg_show_peers"),
        ("routes through the device", "routes"),
        ("RSS, no peers (KiB)", "rss_empty_kib"),
        ("RSS, N peers (KiB)", "rss_kib"),
        ("RSS per peer (bytes)", "rss_per_peer_b"),
        ("RSS after the handshakes (KiB)", "rss_after_handshakes_kib"),
    ]
    hs_rows = [
        ("handshakes: valid responses/s", "rate"),
        ("handshakes: valid responses", "valid_responses"),
        ("handshakes: responses", "responses"),
        ("handshakes: cookie replies", "cookie_replies"),
        ("handshakes: lost", "lost"),
        ("handshakes: initiations sent", "sent"),
        ("handshakes: responder CPU µs per response", "responder_cpu_us_per_response"),
    ]
    head = ["measure", *(r["plane"] for r in results)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(str(r.get(key, "-")) for r in results) + " |")
    for label, key in hs_rows:
        cells = [str(r.get("handshakes", {}).get(key, "-")) for r in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """bench's --hub and what goes with it."""
    parser.add_argument(
        "--hub",
        type=int,
        metavar="N",
        help="instead of the tunnel benchmark: a hub with N peers (up and show times, "
        "memory per peer, handshake capacity against wireguard-go)",
    )
    parser.add_argument(
        "--handshakes",
        type=int,
        default=20000,
        metavar="COUNT",
        help="with --hub: initiations for the handshake capacity, 0 for none (default 20000)",
    )


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.hub <= 60000 or args.handshakes < 0:
        print("pyvpn bench: --hub takes 0 to 60000 peers, --handshakes 0 or more", file=sys.stderr)
        return 2
    try:
        results = measure(args.hub, list(PLANES), args.handshakes if args.hub else 0, 256)
    except (TunnelStartError, CommandError, OSError) as e:
        print(f"pyvpn bench: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0
