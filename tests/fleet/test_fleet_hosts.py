"""Fleet hosts in namespaces, each started with `pyvpn up host.toml` from the
config `pyvpn fleet admit --out` wrote, finding each other through a real etcd:
a mesh that forms by itself, a host admitted while the others run, a host
revoked (and its old record written back), a forged record, and an etcd
outage that the tunnels do not notice.

The network: namespaces a, b, c (and d, admitted later) linked to a registry
namespace's bridge, where etcd listens; a and b also share the bed's own veth.
No NAT: every host reaches every other at a local address."""

import base64
import contextlib
import ipaddress
import json
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunnel.control.convert import to_toml
from tunnel.fleet.agent import KEEP_ALIVE, LEASE_TTL
from tunnel.fleet.record import Admission, sign
from tunnel.lab.etcd import Etcd, etcd_problem
from tunnel.lab.testbed import (
    Daemon,
    Namespace,
    device_name,
    pyvpn_status,
    reachable,
    start_pyvpn,
    uapi_socket,
)
from tunnel.protocol import keys

from ..bed import UNREACHABLE_WITHIN, Testbed
from ..conftest import needs, pyvpn
from ..waiting import wait_until

pytestmark = needs(etcd_problem())

REGISTRY = "198.19.0.254"
FLEET_PREFIX = "/pyvpn/lab"


def inner(i: int) -> str:
    return f"10.77.0.{i + 1}"


@dataclass
class Fleet:
    bed: Testbed
    registry: Namespace
    etcd: Etcd
    directory: Path
    tmp: Path
    datapath: str
    hosts: dict[str, Namespace]

    def admit(self, name: str, directory: Path | None = None) -> Path:
        """Admit a host (through the fleet in `directory`, default the fleet's own);
        its config as --out wrote it, the device named for this run."""
        i = "abcd".index(name)
        path = self.tmp / f"{name}.toml"
        done = pyvpn("fleet", "admit", str(directory or self.directory), name, "--address",
                     f"{inner(i)}/24", "--out", str(path), netns=self.registry.name)  # fmt: skip
        assert done.returncode == 0, done.stderr
        data = tomllib.loads(path.read_text())
        data["interface"] |= {"name": device_name("pvf", name), "datapath": self.datapath}
        data["fleet"] = tomllib.loads((self.directory / "fleet.toml").read_text())["fleet"]
        path.write_text(to_toml(data))
        return path

    def start(self, name: str, path: Path) -> Daemon:
        return start_pyvpn(self.hosts[name], path)

    def command(self, *args: str, directory: Path | None = None) -> str:
        done = pyvpn("fleet", args[0], str(directory or self.directory), *args[1:],
                     netns=self.registry.name)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def etcd_call(self, path: str, payload: dict) -> dict:
        """etcd's JSON API, asked from the registry's namespace."""
        script = (
            "import json, sys, urllib.request\n"
            "request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode())\n"
            "print(urllib.request.urlopen(request, timeout=5).read().decode())\n"
        )
        url = f"http://{REGISTRY}:2379/v3{path}"
        done = self.registry.run(sys.executable, "-c", script, url, json.dumps(payload))
        answer: dict = json.loads(done.stdout)
        return answer


@contextlib.contextmanager
def fleet_of(bed, tmp_path: Path, datapath: str, names: str = "abc") -> Iterator[Fleet]:
    hosts = {"a": bed.a, "b": bed.b}
    for name in names[2:]:
        hosts[name] = bed.add_namespace(name)
    registry = bed.add_namespace("r")
    bed.add_bridge(registry, "br0", [f"{REGISTRY}/24"])
    for i, name in enumerate(names):
        bed.link(hosts[name], registry, [f"198.19.0.{i + 1}/24"], bridge2="br0")
    directory = tmp_path / "lab"
    done = pyvpn("fleet", "init", str(directory), "--registry", f"http://{REGISTRY}:2379",
                 "--prefix", FLEET_PREFIX)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Etcd(registry, REGISTRY) as etcd:
        yield Fleet(bed, registry, etcd, directory, tmp_path, datapath, hosts)


def reaches(fleet: Fleet, a: str, b: str, deadline: float) -> bool:
    return reachable(fleet.hosts[a], inner("abcd".index(b)), max(1.0, deadline - time.monotonic()))


def assert_reach(fleet: Fleet, pairs: list[str], within: float, daemons: list[Daemon]) -> None:
    """Each pair "ab": a pings b within `within` s from now; else the hosts' logs say why."""
    deadline = time.monotonic() + within
    for a, b in pairs:
        if not reaches(fleet, a, b, deadline):
            logs = "\n".join(d.output() for d in daemons)
            raise AssertionError(f"{a} does not reach {b} within {within:g} s:\n{logs}")


def fleet_peers(fleet: Fleet, name: str) -> dict[str, dict]:
    """A host's fleet peers, by host name, as `pyvpn show --json` has them."""
    status = pyvpn_status(device_name("pvf", name))
    return {p["fleet"]["host"]: p for p in status["peers"] if "fleet" in p}


def test_three_hosts_find_each_other_and_ping(bed, tmp_path, datapath):
    with fleet_of(bed, tmp_path, datapath) as fleet:
        paths = {name: fleet.admit(name) for name in "abc"}
        daemons = [fleet.start(name, path) for name, path in paths.items()]
        try:
            assert_reach(
                fleet, ["ab", "ac", "ba", "bc", "ca", "cb"], 10, daemons
            )  # from the last start
            # The path is known at the agent's next look (every second).
            peers = wait_until(
                lambda: (
                    (p := fleet_peers(fleet, "c"))
                    and all(v["fleet"]["path"] for v in p.values())
                    and p
                ),
                "paths known",
            )
            assert sorted(peers) == ["a", "b"]
            # c is on the registry's bridge only: it reaches a and b at their addresses there.
            assert peers["a"]["fleet"]["path"] == "direct local"
            assert peers["a"]["fleet"]["endpoint"] == "198.19.0.1:51820"
            assert peers["a"]["allowed_ips"] == [f"{inner(0)}/32"]
            text = pyvpn("show", device_name("pvf", "c")).stdout
            assert "fleet: c in /pyvpn/lab, registry up" in text
            assert "fleet host: a, direct local 198.19.0.1:51820 since" in text
            listing = fleet.command("list")
            assert "a     10.77.0.1/24  tun   yes" in listing, listing
        finally:
            for daemon in daemons:
                daemon.stop()


def test_a_killed_hosts_endpoints_go_with_its_lease_and_its_admission_stays(bed, tmp_path):
    """kill -9 leaves no one to take the endpoints back: they go when the lease
    the host kept alive runs out (LEASE_TTL), and the host stays admitted."""
    with fleet_of(bed, tmp_path, "auto", names="ab") as fleet:
        paths = {name: fleet.admit(name) for name in "ab"}
        daemons = [fleet.start(name, path) for name, path in paths.items()]
        try:
            assert_reach(fleet, ["ab", "ba"], 10, daemons)
            rows = {line.split()[0]: line.split() for line in fleet.command("list").splitlines()}
            assert rows["b"][3] == "yes" and rows["b"][4] != "-", rows
            daemons[1].proc.kill()
            killed = time.monotonic()
            offline = wait_until(
                lambda: (
                    (
                        rows := {
                            ln.split()[0]: ln.split() for ln in fleet.command("list").splitlines()
                        }
                    )
                    and rows["b"][3] == "no"
                    and rows
                ),
                "b's endpoints gone",
                timeout=LEASE_TTL + 5,
                poll=0.5,
            )
            # Not before the lease could have run out (it was renewed up to the kill).
            assert time.monotonic() - killed >= LEASE_TTL - KEEP_ALIVE - 1
            assert offline["b"][1:4] == ["10.77.0.2/24", "tun", "no"] and offline["b"][4] == "-"
            assert offline["a"][3] == "yes"
        finally:
            for daemon in daemons:
                daemon.stop()
            # What kill -9 leaves: the UAPI socket no one removed.
            uapi_socket(device_name("pvf", "b")).unlink(missing_ok=True)


def test_a_host_comes_and_goes_while_the_others_run(bed, tmp_path):
    """Admitted: reachable by all within 3 s of its start. Revoked: dropped by
    all within 3 s, and its old record written back does not return it. A
    record the fleet key did not sign is refused, counted and shown."""
    with fleet_of(bed, tmp_path, "auto", "abcd") as fleet:
        running = [fleet.start(name, fleet.admit(name)) for name in "abc"]
        try:
            # A reload leaves the fleet's peers and the address it gave alone.
            reload = pyvpn("reload", str(fleet.tmp / "a.toml"))
            assert (reload.returncode, reload.stderr) == (0, ""), reload.stderr
            assert "peers added 0, removed 0" in reload.stdout
            assert sorted(fleet_peers(fleet, "a")) == ["b", "c"]
            old_d = fleet.admit("d")
            prefix = FLEET_PREFIX
            record_d = fleet.etcd_call("/kv/range", {"key": b64(f"{prefix}/hosts/d")})["kvs"][0]
            with fleet.start("d", old_d) as d:
                assert_reach(fleet, ["ad", "bd", "cd", "da", "db", "dc"], 3, [*running, d])

                assert "revoked d" in fleet.command("revoke", "d")
                wait_until(lambda: all("d" not in fleet_peers(fleet, a) for a in "abc"),
                           "d dropped by all", timeout=3)  # fmt: skip
                for a in "abc":
                    assert not reachable(fleet.hosts[a], inner(3), UNREACHABLE_WITHIN)
                # The old admission, written back as it was: still revoked.
                fleet.etcd_call("/kv/put", {"key": record_d["key"], "value": record_d["value"]})
                wait_until(lambda: fleet_refused(fleet, "a").get("revoked"), "the replay refused")
                assert all("d" not in fleet_peers(fleet, a) for a in "abc")
                assert not reachable(fleet.hosts["a"], inner(3), UNREACHABLE_WITHIN)

            # A record signed by another key than the fleet's.
            mallory = Admission("mallory", keys.public_key(keys.generate_private_key()),
                                ipaddress.ip_interface("10.77.0.66/24"), (), "tun", 99)  # fmt: skip
            forged = sign(mallory, Ed25519PrivateKey.generate())
            fleet.etcd_call("/kv/put", {"key": b64(f"{prefix}/hosts/mallory"),
                                        "value": base64.b64encode(forged).decode()})  # fmt: skip
            wait_until(lambda: fleet_refused(fleet, "b").get("forged") == 1, "the forgery refused")
            assert sorted(fleet_peers(fleet, "b")) == ["a", "c"]
            text = pyvpn("show", device_name("pvf", "b")).stdout
            assert "refused records:" in text
        finally:
            for daemon in running:
                daemon.stop()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def fleet_refused(fleet: Fleet, name: str) -> dict[str, int]:
    refused: dict[str, int] = pyvpn_status(device_name("pvf", name))["fleet"]["refused"]
    return refused


def test_an_etcd_outage_loses_no_ping_and_is_caught_up_on(bed, tmp_path):
    with fleet_of(bed, tmp_path, "auto", "abcd") as fleet:
        running = [fleet.start(name, fleet.admit(name)) for name in "abc"]
        try:
            assert_reach(fleet, ["ab", "bc", "ca"], 10, running)
            # Pings every 0.2 s for 36 s, across the outage and past its end.
            pings = {
                (a, b): fleet.hosts[a].popen("ping", "-n", "-q", "-i", "0.2", "-c", "180",
                                            inner("abcd".index(b)), stdout=subprocess.PIPE,
                                            text=True)
                for a, b in ("ab", "bc", "ca")
            }  # fmt: skip
            fleet.etcd.stop()
            outage = time.monotonic()
            time.sleep(10)
            # Meanwhile d is admitted, through an etcd the hosts cannot reach.
            hidden = tmp_path / "hidden"
            shutil.copytree(fleet.directory, hidden)
            text = (hidden / "fleet.toml").read_text()
            (hidden / "fleet.toml").write_text(text.replace(REGISTRY, "127.0.0.1"))
            fleet.etcd.start(listen="127.0.0.1")
            path_d = fleet.admit("d", hidden)
            fleet.etcd.stop()
            time.sleep(max(0.0, 30 - (time.monotonic() - outage)))
            fleet.etcd.start()
            # The hosts catch up on what they missed: d is everyone's peer.
            wait_until(lambda: all("d" in fleet_peers(fleet, a) for a in "abc"), "d known to all")
            for (a, b), ping in pings.items():
                out, _ = ping.communicate(timeout=60)
                assert " 180 received, 0% packet loss" in out, f"{a} -> {b}: {out}"
            with fleet.start("d", path_d) as d:
                assert_reach(fleet, ["ad", "bd", "cd"], 3, [*running, d])
        finally:
            for daemon in running:
                daemon.stop()
