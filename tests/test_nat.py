"""Getting through NAT, in a small internet of namespaces (tunnel/lab/internet.py)
with a real coturn: STUN from the WireGuard socket learns the mapping the NAT
really uses, two hosts behind cone NATs punch through to each other, and a host
behind a symmetric NAT is reached through a TURN relay."""

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunnel.lab.coturn import Coturn
from tunnel.lab.internet import SERVERS, Internet, Mapping, conntrack_mapping
from tunnel.lab.testbed import Namespace, host_problem, missing_tools
from tunnel.protocol.address import Address, format_address

from .conftest import needs

ROOT = Path(__file__).resolve().parent.parent
PORT = 51820

pytestmark = needs(host_problem() or missing_tools(("turnserver", "conntrack", "nft")))


@pytest.fixture
def internet(bed) -> Iterator[tuple[Internet, Coturn]]:
    net = Internet(bed)
    with Coturn(net.namespace, SERVERS) as coturn:
        yield net, coturn


def stun_probe(ns: Namespace, server: Address, plane: str, port: int = PORT) -> Address:
    """tests/stun_probe.py in `ns`: the public address of a UDP port, asked from a
    data plane's WireGuard socket (plane "python" or "native") or a bare socket."""
    argv = ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "tests.stun_probe"]
    done = ns.run(*argv, format_address(server), "--plane", plane, "--port", str(port))
    answer = json.loads(done.stdout)
    assert "mapped" in answer, answer["error"]
    return tuple(answer["mapped"])


def test_stun_from_the_wireguard_socket_learns_the_mapping_the_nat_uses(internet, datapath):
    """Two hosts behind one cone NAT, each with its WireGuard socket on the same
    port: the NAT cannot give both that port, and what STUN reports to each is
    what the NAT's connection tracking says it mapped that host onto."""
    net, coturn = internet
    site = net.add_site(Mapping.ENDPOINT_INDEPENDENT, hosts=2)
    mapped = [stun_probe(host, coturn.server, datapath) for host in site.hosts]
    for host, address in zip(site.hosts, mapped, strict=True):
        assert address[0] == site.public
        assert conntrack_mapping(site, host, PORT) == [address]
    assert mapped[0] != mapped[1]
