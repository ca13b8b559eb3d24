"""A small internet of namespaces, for fleets: public servers, NAT sites with
hosts behind them, and hosts with public addresses.

    internet (bridge inet0, 203.0.113.1: where coturn and etcd listen)
      |-- router of site 1 (203.0.113.11) -- masquerade -- LAN 192.168.1.0/24 -- hosts
      |-- router of site 2 (203.0.113.12) -- ...
      `-- public host (203.0.113.101)

A site's router maps its LAN's flows with nftables' masquerade, as a home
router does. How it maps is RFC 4787's distinction, which decides whether hole
punching can work: `ENDPOINT_INDEPENDENT` keeps a host's source port (Linux's
masquerade as it is), so every destination sees the same mapped address, the
one STUN reports; `ENDPOINT_DEPENDENT` ("symmetric", `masquerade fully-random`)
picks a new random port for each destination, so the address STUN reports is
of no use to anyone else. Either way the router lets in only answers to flows
its LAN started (conntrack), as every NAT does.

Built in a Testbed's namespaces (tunnel/lab/testbed.py), whose teardown removes
it all. Addresses are from RFC 5737's TEST-NET-3, never routed anywhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .testbed import Namespace, Testbed, wait_reachable

INTERNET_PREFIX = "203.0.113"
SERVERS = f"{INTERNET_PREFIX}.1"  # the internet namespace's own address
BRIDGE = "inet0"
LAN_BRIDGE = "lan0"
INTERNET_LABEL = "inet"


class Mapping(enum.Enum):
    """How a NAT maps a LAN host's flows (RFC 4787 section 4.1)."""

    ENDPOINT_INDEPENDENT = "masquerade"
    ENDPOINT_DEPENDENT = "masquerade fully-random"


@dataclass
class Site:
    """A NAT router and the LAN behind it."""

    number: int
    router: Namespace
    public: str  # the router's address on the internet: every host's mapped address
    mapping: Mapping
    hosts: list[Namespace] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)  # namespace name -> LAN address

    @property
    def gateway(self) -> str:
        return f"192.168.{self.number}.1"

    @property
    def uplink(self) -> str:
        """The router's device on the internet (the one masquerade maps onto)."""
        return f"to-{INTERNET_LABEL}"


class Internet:
    """The internet namespace with its bridge; sites and public hosts are added on it."""

    def __init__(self, bed: Testbed) -> None:
        self.bed = bed
        self.namespace = bed.add_namespace(INTERNET_LABEL)
        bed.add_bridge(self.namespace, BRIDGE, [f"{SERVERS}/24"])
        self.sites: list[Site] = []
        self.public_hosts: list[Namespace] = []

    def add_site(self, mapping: Mapping, hosts: int = 1) -> Site:
        """A NAT router on the internet with `hosts` hosts on its LAN."""
        number = len(self.sites) + 1
        router = self.bed.add_namespace(f"r{number}")
        public = f"{INTERNET_PREFIX}.{10 + number}"
        self.bed.link(self.namespace, router, [], [f"{public}/24"], bridge1=BRIDGE)
        site = Site(number, router, public, mapping)
        self.bed.add_bridge(router, LAN_BRIDGE, [f"{site.gateway}/24"])
        router.sysctl("net.ipv4.ip_forward", 1)
        router.run("nft", "-f", "-", input=_masquerade(site.uplink, mapping))
        self.sites.append(site)
        for _ in range(hosts):
            self.add_host(site)
        return site

    def add_host(self, site: Site) -> Namespace:
        """A host on the site's LAN, its default route through the router."""
        index = len(site.hosts) + 1
        host = self.bed.add_namespace(f"s{site.number}h{index}")
        address = f"192.168.{site.number}.{10 + index}"
        self.bed.link(site.router, host, [], [f"{address}/24"], bridge1=LAN_BRIDGE)
        host.run("ip", "route", "add", "default", "via", site.gateway)
        site.hosts.append(host)
        site.addresses[host.name] = address
        wait_reachable(host, SERVERS, timeout=5)
        return host

    def add_public_host(self) -> tuple[Namespace, str]:
        """A host with an address on the internet itself, and that address."""
        index = len(self.public_hosts) + 1
        host = self.bed.add_namespace(f"pub{index}")
        address = f"{INTERNET_PREFIX}.{100 + index}"
        self.bed.link(self.namespace, host, [], [f"{address}/24"], bridge1=BRIDGE)
        self.public_hosts.append(host)
        wait_reachable(host, SERVERS, timeout=5)
        return host, address


def _masquerade(uplink: str, mapping: Mapping) -> str:
    """The router's ruleset: LAN flows leaving by the uplink are masqueraded, and
    from the uplink only what belongs to them comes in. Dropped before conntrack
    confirms it, an unsolicited datagram leaves no flow behind; answered by the
    router itself (ICMP port unreachable), it would stay as a flow that takes
    the mapping a hole punch needs, as no real router lets it."""
    return (
        "table ip nat {\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "{uplink}" {mapping.value}\n'
        "  }\n"
        "}\n"
        "table inet filter {\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f'    iifname "{uplink}" ct state != {{ established, related }} drop\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{uplink}" ct state != {{ established, related }} drop\n'
        "  }\n"
        "}\n"
    )


def conntrack_mapping(site: Site, host: Namespace, port: int) -> list[tuple[str, int]]:
    """The addresses the site's router maps the host's UDP port onto, one per flow
    it tracks: what the NAT really does, to hold a STUN answer against."""
    done = site.router.run(
        "conntrack", "-L", "-p", "udp", "--orig-src", site.addresses[host.name],
        "--orig-port-src", str(port), "-o", "extended", check=False,
    )  # fmt: skip
    mappings = set()
    for line in done.stdout.splitlines():
        # Each flow's line names the original direction, then the reply's, whose
        # destination is the mapped address.
        pairs = [f.split("=", 1) for f in line.split() if "=" in f]
        dsts = [v for k, v in pairs if k == "dst"]
        dports = [int(v) for k, v in pairs if k == "dport"]
        if len(dsts) == 2 and len(dports) == 2:
            mappings.add((dsts[1], dports[1]))
    return sorted(mappings)
