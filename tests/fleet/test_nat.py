"""Getting through NAT, in a small internet of namespaces (tunnel/lab/internet.py)
with a real coturn: STUN from the WireGuard socket learns the mapping the NAT
really uses, two hosts behind cone NATs punch through to each other, and a host
behind a symmetric NAT is reached through a TURN relay."""

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tunnel.lab.coturn import Coturn
from tunnel.lab.internet import SERVERS, Internet, Mapping, conntrack_mapping
from tunnel.lab.testbed import (
    INNER_A,
    INNER_B,
    Daemon,
    Namespace,
    host_problem,
    missing_tools,
    poll_until,
    pyvpn_status,
    start_daemon,
    start_pyvpn,
    wait_reachable,
    write_pair_configs,
)
from tunnel.protocol import keys
from tunnel.protocol.address import Address, format_address

from ..conftest import ROOT, needs

PORT = 51820

pytestmark = needs(host_problem() or missing_tools(("turnserver", "conntrack", "nft")))


@pytest.fixture
def internet(bed) -> Iterator[tuple[Internet, Coturn]]:
    net = Internet(bed)
    with Coturn(net.namespace, SERVERS) as coturn:
        yield net, coturn


def in_checkout(module: str, *args: str) -> list[str]:
    """`python -m tests.MODULE ARGS` from this checkout, for a namespace to run."""
    return ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", f"tests.{module}", *args]


def stun_probe(
    ns: Namespace, coturn: Coturn, plane: str, port: int = PORT, count: int = 1
) -> Address:
    """tests/fleet/stun_probe.py in `ns`: the public address of a UDP port, asked `count`
    times from a data plane's WireGuard socket (plane "python" or "native") or a
    bare socket; every question answered."""
    argv = in_checkout("fleet.stun_probe", format_address(coturn.server), "--plane", plane,
                       "--port", str(port), "--count", str(count))  # fmt: skip
    answer = json.loads(ns.run(*argv, timeout=30 + 20 * count).stdout)
    assert "mapped" in answer, f"{answer['error']}; coturn's log:\n{coturn.log()[-2000:]}"
    return tuple(answer["mapped"])


@pytest.mark.parametrize("mapping", list(Mapping))
def test_the_lab_nats_map_as_rfc_4787_says(internet, mapping):
    """Asked from one port by two STUN servers (coturn on the internet's servers
    and on a public host), an endpoint-independent NAT reports one mapped
    address to both, an endpoint-dependent one another to each."""
    net, coturn = internet
    public, address = net.add_public_host()
    host = net.add_site(mapping).hosts[0]
    with Coturn(public, address) as other:
        mapped = [stun_probe(host, server, "socket") for server in (coturn, other)]
    if mapping is Mapping.ENDPOINT_INDEPENDENT:
        assert mapped[0] == mapped[1]
    else:  # fully random: the same port twice is a chance of one in 64,000
        assert mapped[0][0] == mapped[1][0] and mapped[0][1] != mapped[1][1]


def test_stun_from_the_wireguard_socket_learns_the_mapping_the_nat_uses(internet, datapath):
    """Two hosts behind one cone NAT, each with its WireGuard socket on the same
    port: the NAT cannot give both that port, and what STUN reports to each is
    what the NAT's connection tracking says it mapped that host onto."""
    net, coturn = internet
    site = net.add_site(Mapping.ENDPOINT_INDEPENDENT, hosts=2)
    mapped = [stun_probe(host, coturn, datapath) for host in site.hosts]
    for host, address in zip(site.hosts, mapped, strict=True):
        assert address[0] == site.public
        assert conntrack_mapping(site, host, PORT) == [address]
    assert mapped[0] != mapped[1]


def turn_relay_argv(coturn: Coturn, password: str, *args: str) -> list[str]:
    """tests/fleet/turn_relay.py for the tunnel on PORT, with coturn's user."""
    return in_checkout("fleet.turn_relay", format_address(coturn.server), "--user", coturn.username,
                       "--password", password, "--wireguard-port", str(PORT), *args)  # fmt: skip


def relay_for(ns: Namespace, coturn: Coturn, peer: Address) -> tuple[Daemon, Address, Address]:
    """tests/fleet/turn_relay.py in `ns`, relaying for the tunnel on PORT to `peer`: the
    running relay, its relayed address, and the local port that stands for `peer`."""
    argv = turn_relay_argv(coturn, coturn.password, "--peer", format_address(peer))
    relay = start_daemon(ns, argv, "turn_relay", label="TURN relay")
    line = poll_until(lambda: relay.output().strip() or (not relay.alive() and "dead"), 15)
    answer = json.loads(line) if line and line != "dead" else {"error": relay.output()}
    if "relayed" not in answer:
        relay.stop()
        pytest.fail(f"no TURN allocation: {answer['error']}\n{coturn.log()[-2000:]}")
    return relay, tuple(answer["relayed"]), tuple(answer["ports"][0])


def test_a_host_behind_a_symmetric_nat_is_reached_through_a_turn_relay(
    internet, datapath, tmp_path
):
    """Behind an endpoint-dependent NAT a host's mapping toward a peer is not the
    one STUN saw, so no direct path can be set up; through a TURN allocation on
    coturn and relay.py's local port, a cone-NAT host and it ping each other."""
    net, coturn = internet
    cone = net.add_site(Mapping.ENDPOINT_INDEPENDENT).hosts[0]
    symmetric = net.add_site(Mapping.ENDPOINT_DEPENDENT).hosts[0]
    cone_mapped = stun_probe(cone, coturn, "socket")
    relay, relayed, local = relay_for(symmetric, coturn, cone_mapped)
    with relay:
        path_c, path_s = write_pair_configs(
            tmp_path, "tun", datapath,
            peer_a={"endpoint": format_address(relayed)},
            peer_b={"endpoint": format_address(local)},
        )  # fmt: skip
        with start_pyvpn(cone, path_c) as c, start_pyvpn(symmetric, path_s) as s:
            wait_reachable(cone, INNER_B)
            wait_reachable(symmetric, INNER_A)
            # Each side's WireGuard has the relay as the other's endpoint.
            assert pyvpn_status(c.name)["peers"][0]["endpoint"] == format_address(relayed)
            assert pyvpn_status(s.name)["peers"][0]["endpoint"] == format_address(local)


ROUNDS = 3


def test_two_hosts_behind_cone_nats_punch_through_to_each_other(internet, datapath, tmp_path):
    """Each host has the other's mapped address (from STUN) as its endpoint and
    both send initiations: the first of each opens its own NAT toward the other,
    so the one that comes after gets in, and the crossed handshakes converge on
    one session. From closed NATs (conntrack flushed), round after round."""
    net, coturn = internet
    sites = [net.add_site(Mapping.ENDPOINT_INDEPENDENT) for _ in range(2)]
    hosts = [site.hosts[0] for site in sites]
    for _ in range(ROUNDS):
        for site in sites:
            site.router.run("conntrack", "-F")
        mapped = [stun_probe(host, coturn, "socket") for host in hosts]
        assert [address[0] for address in mapped] == [site.public for site in sites]
        path_a, path_b = write_pair_configs(
            tmp_path, "tun", datapath,
            peer_a={"endpoint": format_address(mapped[1])},
            peer_b={"endpoint": format_address(mapped[0])},
        )  # fmt: skip
        with start_pyvpn(hosts[0], path_a) as a, start_pyvpn(hosts[1], path_b) as b:
            wait_reachable(hosts[0], INNER_B)
            wait_reachable(hosts[1], INNER_A)
            for daemon, other in ((a, mapped[1]), (b, mapped[0])):
                (peer,) = pyvpn_status(daemon.name)["peers"]
                assert peer["endpoint"] == format_address(other)


def test_a_relay_with_the_wrong_password_fails_clearly(internet):
    net, coturn = internet
    host = net.add_site(Mapping.ENDPOINT_DEPENDENT).hosts[0]
    done = host.run(*turn_relay_argv(coturn, "wrong"), check=False, timeout=60)
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error.startswith(f"no TURN allocation on {format_address(coturn.server)}: "), error
    assert "401" in error, error


def test_two_hosts_behind_symmetric_nats_meet_through_one_relay(internet, datapath, tmp_path):
    """Neither host's STUN-mapped address is the one the other's packets come
    from. One host's relay has a local port for the other's stale candidate;
    when the other reaches the relayed address from a new mapping of the same
    address, the relay follows it there, as WireGuard follows a roaming peer."""
    net, coturn = internet
    first, second = (net.add_site(Mapping.ENDPOINT_DEPENDENT).hosts[0] for _ in range(2))
    stale = stun_probe(second, coturn, "socket")
    relay, relayed, local = relay_for(first, coturn, stale)
    with relay:
        path_1, path_2 = write_pair_configs(
            tmp_path, "tun", datapath,
            peer_a={"endpoint": format_address(local)},
            peer_b={"endpoint": format_address(relayed)},
        )  # fmt: skip
        # The relayed host first: its initiation, sent to the stale candidate,
        # gives the other's address permission on the allocation.
        with start_pyvpn(first, path_1), start_pyvpn(second, path_2):
            wait_reachable(second, INNER_A)
            wait_reachable(first, INNER_B)


def test_hostile_stun_look_alikes_leave_the_wireguard_socket_answering(internet, datapath):
    """A flood of STUN look-alikes and forged Binding answers at a host's
    WireGuard socket while its plane asks coturn, again and again: every
    question gets the true answer (on the native plane through C's upcalls)."""
    net, coturn = internet
    host, address = net.add_public_host()
    attacker, _ = net.add_public_host()
    key = keys.encode(keys.public_key(keys.generate_private_key()))
    flood = attacker.popen(
        *in_checkout("hostile", f"{address}:{PORT}", "--public-key", key, "--count", "60000",
                     "--rate", "20000", "--kind", "stun_lookalike",
                     "--kind", "stun_binding_response"),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    mapped = stun_probe(host, coturn, datapath, count=12)
    sent = json.loads(flood.communicate(timeout=60)[0])["sent"]
    assert mapped == (address, PORT)
    assert sent["stun_lookalike"] > 0 and sent["stun_binding_response"] > 0
