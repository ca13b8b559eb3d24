"""Fleet hosts in namespaces, each started with `pyvpn up host.toml` from the
config `pyvpn fleet admit --out` wrote, finding each other through a real etcd:
a mesh that forms by itself, a host admitted while the others run, a host
revoked (and its old record written back), a forged record, and an etcd
outage that the tunnels do not notice.

The network: namespaces a, b, c (and d, admitted later) linked to a registry
namespace's bridge, where etcd listens; a and b also share the bed's own veth.
No NAT: every host reaches every other at a local address."""

import contextlib
import json
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunnel.control.convert import to_toml
from tunnel.lab.etcd import Etcd, etcd_problem
from tunnel.lab.testbed import (
    Daemon,
    Namespace,
    device_name,
    pyvpn_status,
    reachable,
    start_pyvpn,
)

from .bed import Testbed
from .conftest import needs, pyvpn
from .waiting import wait_until

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

    def admit(self, name: str) -> Path:
        """Admit a host; its config as --out wrote it, the device named for this run."""
        i = "abcd".index(name)
        path = self.tmp / f"{name}.toml"
        done = pyvpn("fleet", "admit", str(self.directory), name, "--address",
                     f"{inner(i)}/24", "--out", str(path), netns=self.registry.name)  # fmt: skip
        assert done.returncode == 0, done.stderr
        data = tomllib.loads(path.read_text())
        data["interface"] |= {"name": device_name("pvf", name), "datapath": self.datapath}
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


def fleet_peers(fleet: Fleet, name: str) -> dict[str, dict]:
    """A host's fleet peers, by host name, as `pyvpn show --json` has them."""
    status = pyvpn_status(device_name("pvf", name))
    return {p["fleet"]["host"]: p for p in status["peers"] if "fleet" in p}


def test_three_hosts_find_each_other_and_ping(bed, tmp_path, datapath):
    with fleet_of(bed, tmp_path, datapath) as fleet:
        paths = {name: fleet.admit(name) for name in "abc"}
        daemons = [fleet.start(name, path) for name, path in paths.items()]
        deadline = time.monotonic() + 10  # from the last start
        try:
            for a in "abc":
                for b in "abc".replace(a, ""):
                    assert reaches(fleet, a, b, deadline), f"{a} does not reach {b}"
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
