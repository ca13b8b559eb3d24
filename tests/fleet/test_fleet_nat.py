"""A fleet across NATs, end to end: hosts started with `pyvpn up` from the
config `pyvpn fleet admit --out` wrote, in a small internet of namespaces
(tunnel/lab/internet.py) where a real etcd and a real coturn listen. They
learn their mapped addresses by STUN, allocate on the TURN server, publish
both, and find a path to each other by themselves:

    internet: etcd, coturn (203.0.113.1)
      |-- cone site 1: c1, c2 (behind one NAT)
      |-- cone site 2: d
      |-- symmetric site 3: s
      `-- public host p"""

import contextlib
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tunnel.control.convert import to_toml
from tunnel.lab.coturn import Coturn
from tunnel.lab.etcd import Etcd, etcd_problem
from tunnel.lab.internet import SERVERS, Internet, Mapping
from tunnel.lab.testbed import (
    Daemon,
    Namespace,
    device_name,
    host_problem,
    missing_tools,
    poll_until,
    pyvpn_status,
    reachable,
    start_pyvpn,
)
from tunnel.protocol.address import format_address

from ..conftest import needs, pyvpn
from ..waiting import wait_until

pytestmark = [
    needs(etcd_problem()),
    needs(host_problem() or missing_tools(("turnserver", "conntrack", "nft"))),
]

PREFIX = "/pyvpn/nat"
# Every pair pings within this of the last start, relayed pairs too (the bound).
MEET_WITHIN = 10


@dataclass
class NatFleet:
    net: Internet
    coturn: Coturn
    directory: Path
    tmp: Path
    datapath: str
    hosts: dict[str, Namespace] = field(default_factory=dict)
    inner: dict[str, str] = field(default_factory=dict)
    daemons: list[Daemon] = field(default_factory=list)

    def admit(self, name: str, ns: Namespace, mode: str = "tun") -> Path:
        """Admit `name`, running in `ns`: its config as --out wrote it, the device
        named for this run."""
        self.hosts[name] = ns
        self.inner[name] = f"10.78.0.{len(self.inner) + 1}"
        path = self.tmp / f"{name}.toml"
        done = pyvpn("fleet", "admit", str(self.directory), name, "--address",
                     f"{self.inner[name]}/24", "--mode", mode, "--out", str(path),
                     netns=self.net.namespace.name)  # fmt: skip
        assert done.returncode == 0, done.stderr
        data = tomllib.loads(path.read_text())
        data["interface"] |= {"name": device_name("pvn", name), "datapath": self.datapath}
        path.write_text(to_toml(data))
        return path

    def start(self, name: str, path: Path) -> Daemon:
        daemon = start_pyvpn(self.hosts[name], path)
        self.daemons.append(daemon)
        return daemon

    def peers(self, name: str) -> dict[str, dict]:
        """A host's fleet peers, by host name, as `pyvpn show --json` has them."""
        status = pyvpn_status(device_name("pvn", name))
        return {p["fleet"]["host"]: p["fleet"] for p in status["peers"] if "fleet" in p}

    def show(self, name: str) -> str:
        return pyvpn("show", device_name("pvn", name)).stdout

    def assert_reach(self, pairs: list[tuple[str, str]], within: float) -> None:
        """Each (a, b): a pings b's inner address within `within` s from now. Pinged
        again and again: a ping gives up at once when ARP (tap) is not answered."""
        deadline = time.monotonic() + within
        for a, b in pairs:
            left = max(1.0, deadline - time.monotonic())
            if not poll_until(lambda a=a, b=b: reachable(self.hosts[a], self.inner[b], 1), left):
                logs = "\n".join(d.output() for d in self.daemons)
                logs += "\n".join(self.show(name) for name in self.hosts)
                raise AssertionError(f"{a} does not reach {b} within {within:g} s:\n{logs}")


@contextlib.contextmanager
def nat_fleet(bed, tmp_path: Path, datapath: str) -> Iterator[NatFleet]:
    net = Internet(bed)
    directory = tmp_path / "nat"
    server = format_address((SERVERS, 3478))
    with Etcd(net.namespace, SERVERS), Coturn(net.namespace, SERVERS) as coturn:
        done = pyvpn("fleet", "init", str(directory), "--registry", f"http://{SERVERS}:2379",
                     "--prefix", PREFIX, "--stun", server, "--relay",
                     f"turn:{coturn.username}:{coturn.password}@{server}")  # fmt: skip
        assert done.returncode == 0, done.stderr
        fleet = NatFleet(net, coturn, directory, tmp_path, datapath)
        try:
            yield fleet
        finally:
            for daemon in fleet.daemons:
                daemon.stop()


def pairs_of(names: str) -> list[tuple[str, str]]:
    return [(a, b) for a in names for b in names if a != b]


@pytest.mark.serial  # five hosts, etcd and coturn on two cores
def test_hosts_behind_cone_and_symmetric_nats_reach_each_other(bed, tmp_path, datapath):
    """Every pair pings. Two hosts behind one NAT meet at their LAN addresses;
    hosts behind cone NATs and the public host directly; the host behind the
    symmetric NAT and those behind cone NATs through the TURN relay, and
    `pyvpn show` says so."""
    with nat_fleet(bed, tmp_path, datapath) as fleet:
        net = fleet.net
        cone1 = net.add_site(Mapping.ENDPOINT_INDEPENDENT, hosts=2)
        cone2 = net.add_site(Mapping.ENDPOINT_INDEPENDENT)
        symmetric = net.add_site(Mapping.ENDPOINT_DEPENDENT)
        public, _ = net.add_public_host()
        where = {"c": cone1.hosts[0], "e": cone1.hosts[1], "d": cone2.hosts[0],
                 "s": symmetric.hosts[0], "p": public}  # fmt: skip
        paths = {name: fleet.admit(name, ns) for name, ns in where.items()}
        for name, path in paths.items():
            fleet.start(name, path)
        fleet.assert_reach(pairs_of("cedps"), MEET_WITHIN)  # from the last start

        def settled(name: str) -> dict[str, dict] | None:
            peers = fleet.peers(name)
            return peers if all(p["path"] for p in peers.values()) else None

        c = wait_until(lambda: settled("c"), "c's paths known")
        assert c["e"]["path"] == "direct local"
        assert c["e"]["endpoint"] == f"{cone1.addresses[cone1.hosts[1].name]}:51820"
        assert c["d"]["path"] == "direct mapped"
        assert c["d"]["endpoint"].startswith(f"{cone2.public}:")
        assert c["s"]["path"] == "relayed"
        s = wait_until(lambda: settled("s"), "s's paths known")
        # Behind a symmetric NAT: relayed to hosts behind NATs, direct to the
        # public host, which answers whatever port the NAT picked.
        assert {name: p["path"] for name, p in s.items()} == {
            "c": "relayed", "d": "relayed", "e": "relayed", "p": "direct mapped"
        }  # fmt: skip
        # Both ends name the one relayed address they meet through.
        assert s["c"]["endpoint"] == c["s"]["endpoint"]
        assert s["c"]["endpoint"].startswith(f"{SERVERS}:")
        assert "fleet host: s, relayed 203.0.113.1:" in fleet.show("c")


def block(router: Namespace, other: str) -> None:
    """The site's router drops what goes to or comes from `other` (a router's
    public address): no direct path between the two sites, the relay still there."""
    rules = (
        "table ip pyvpnblock {\n"
        "  chain forward {\n"
        "    type filter hook forward priority -10; policy accept;\n"
        f"    ip daddr {other} drop\n"
        f"    ip saddr {other} drop\n"
        "  }\n"
        "}\n"
    )
    router.run("nft", "-f", "-", input=rules)


def test_a_relayed_pair_goes_direct_once_the_direct_path_works(bed, tmp_path, datapath):
    """Two cone sites that cannot reach each other meet through the relay;
    once the way between them opens, they find it within a few rounds of
    asking (DIRECT_RETRY) and `pyvpn show` says direct."""
    with nat_fleet(bed, tmp_path, datapath) as fleet:
        one, two = (fleet.net.add_site(Mapping.ENDPOINT_INDEPENDENT) for _ in range(2))
        block(one.router, two.public)
        paths = {"a": fleet.admit("a", one.hosts[0]), "b": fleet.admit("b", two.hosts[0])}
        for name, path in paths.items():
            fleet.start(name, path)
        fleet.assert_reach([("a", "b"), ("b", "a")], MEET_WITHIN)
        wait_until(lambda: fleet.peers("a")["b"]["path"] == "relayed", "a relayed path")
        one.router.run("nft", "delete", "table", "ip", "pyvpnblock")
        one.router.run("conntrack", "-F")
        for name, other in (("a", "b"), ("b", "a")):
            wait_until(lambda n=name, o=other: fleet.peers(n)[o]["path"] == "direct mapped",
                       f"{name}'s direct path to {other}", timeout=60)  # fmt: skip
        fleet.assert_reach([("a", "b"), ("b", "a")], 5)
        assert "direct again" in fleet.daemons[0].output() + fleet.daemons[1].output()


def test_tap_hosts_share_one_ethernet_segment(bed, tmp_path, datapath):
    """Tap hosts in three sites, one behind the symmetric NAT, each peer of each
    (a mesh): their devices are one Ethernet segment, on which ARP finds every
    host's MAC address across the fleet and pings cross as frames."""
    with nat_fleet(bed, tmp_path, datapath) as fleet:
        net = fleet.net
        mappings = (Mapping.ENDPOINT_INDEPENDENT, Mapping.ENDPOINT_INDEPENDENT,
                    Mapping.ENDPOINT_DEPENDENT)  # fmt: skip
        for name, mapping in zip("xyz", mappings, strict=True):
            ns = net.add_site(mapping).hosts[0]
            fleet.start(name, fleet.admit(name, ns, mode="tap"))
        fleet.assert_reach(pairs_of("xyz"), MEET_WITHIN)
        for a, b in pairs_of("xyz"):
            neighbour = fleet.hosts[a].run("ip", "neigh", "show", fleet.inner[b]).stdout
            assert f"dev {device_name('pvn', a)} lladdr" in neighbour, neighbour
