"""A hub: hundreds of peers inside the interface's own prefix, as `pyvpn bench
--hub` builds it (tunnel/lab/hub.py). Routes only where the device's own routes
do not reach, every peer listed by `wg show dump` and `pyvpn show`, nothing left
after teardown, and the handshake-capacity tool's answers checked as an
initiator checks them, against pyvpn and against wireguard-go."""

import ipaddress
import json
import subprocess
import sys

import pytest

from tunnel.core.actions import Send
from tunnel.core.interface import Interface
from tunnel.lab import hub
from tunnel.lab.handshakes import prepare
from tunnel.lab.testbed import device_name, pyvpn_env, pyvpn_status, run_command
from tunnel.protocol import keys
from tunnel.protocol.constants import MESSAGE_COOKIE_REPLY, MESSAGE_RESPONSE
from tunnel.protocol.peer_config import PeerConfig

from ..bed import leftovers

pytestmark = pytest.mark.netns

INSIDE, OUTSIDE = 300, 20


def routes(ns, name: str) -> set[str]:
    """The destinations of the IPv4 routes through the device, as `ip route` shows them."""
    out = ns.run("ip", "-4", "route", "show", "dev", name).stdout
    return {str(ipaddress.ip_network(line.split()[0])) for line in out.splitlines()}


def dump(name: str) -> dict[str, str]:
    """`wg show NAME dump`: each peer's public key and allowed IPs."""
    lines = run_command(["wg", "show", name, "dump"]).stdout.splitlines()
    return {line.split("\t")[0]: line.split("\t")[3] for line in lines[1:]}


def expected(h: hub.Hub) -> dict[str, str]:
    return {
        keys.encode(keys.public_key(k)): (
            hub.peer_network(i) if i < INSIDE else hub.peer_network(i - INSIDE, hub.OUTSIDE)
        )
        for i, k in enumerate(h.peer_keys)
    }


@pytest.fixture
def running(tmp_path, datapath):
    name = device_name("pvhub", "a")
    with hub.namespace(f"hubt{datapath[0]}") as ns:
        h = hub.write_hub(tmp_path, name, INSIDE, datapath, outside=OUTSIDE)
        daemon, _ = hub.start_hub(ns, h)
        with daemon:
            yield ns, h, daemon
        assert not ns.has_link(name)
    assert leftovers() == []


def test_only_what_the_prefix_does_not_cover_gets_a_route(running):
    ns, h, _ = running
    outside = {hub.peer_network(i, hub.OUTSIDE) for i in range(OUTSIDE)}
    assert routes(ns, h.name) == {str(hub.HUB_ADDRESS.network)} | outside


def test_every_peer_is_listed_by_wg_show_dump_and_pyvpn_show(running):
    _, h, _ = running
    assert dump(h.name) == expected(h)
    status = pyvpn_status(h.name)
    assert {p["public_key"]: ",".join(p["allowed_ips"]) for p in status["peers"]} == expected(h)
    text = subprocess.run(
        [sys.executable, "-m", "tunnel", "show", h.name],
        capture_output=True,
        text=True,
        env=pyvpn_env(),
        check=True,
    ).stdout
    assert text.count("\npeer: ") == INSIDE + OUTSIDE
    for key, network in expected(h).items():
        assert f"peer: {key}\n  allowed ips: {network}\n" in text


def test_wg_set_routes_what_no_route_of_the_device_covers(running):
    ns, h, _ = running
    new = [keys.encode(keys.public_key(keys.generate_private_key())) for _ in range(3)]
    before = routes(ns, h.name)
    # Inside the hub's prefix: no route of its own; a /16 outside, and a /24 inside
    # that /16 (pyvpn's own route covers it, but would take it along when it goes).
    ns.run("wg", "set", h.name, "peer", new[0], "allowed-ips", "10.128.200.7/32")
    ns.run("wg", "set", h.name, "peer", new[1], "allowed-ips", "10.140.0.0/16")
    ns.run("wg", "set", h.name, "peer", new[2], "allowed-ips", "10.140.1.0/24")
    assert routes(ns, h.name) == before | {"10.140.0.0/16", "10.140.1.0/24"}
    ns.run("wg", "set", h.name, "peer", new[1], "remove")
    assert routes(ns, h.name) == before | {"10.140.1.0/24"}
    ns.run("wg", "set", h.name, "peer", new[0], "remove", "peer", new[2], "remove")
    assert routes(ns, h.name) == before
    assert dump(h.name) == expected(h)


@pytest.mark.parametrize("datapath", ["native"])
@pytest.mark.serial
def test_handshake_capacity_counts_only_valid_responses(running, tmp_path):
    ns, h, daemon = running
    result = hub.handshake_capacity(ns, daemon, h, tmp_path, count=400, window=32)
    assert result["initiators"] == INSIDE + OUTSIDE
    assert result["responses"] + result["lost"] == 400
    assert result["valid_responses"] == result["responses"] > 0
    assert result["rate"] > 0
    # Over UNDER_LOAD_INITIATIONS_PER_SECOND the hub asks for cookies first: the
    # tool answers them as an initiator does, with mac2, and is answered then.
    assert result["cookie_replies"] > 0
    assert result["sent"] == 400 + result["cookie_replies"]
    status = pyvpn_status(h.name)
    assert status["cookie_replies_sent"] == result["cookie_replies"]


def test_the_tool_checks_wireguard_gos_answers_the_same_way(tmp_path):
    name = device_name("pvhub", "w")
    with hub.namespace("hubtw") as ns:
        h = hub.write_hub(tmp_path, name, 20)
        with hub.start_wireguard_go_hub(ns, h, tmp_path) as daemon:
            result = hub.handshake_capacity(ns, daemon, h, tmp_path, count=200, window=16)
            assert result["valid_responses"] == result["responses"] > 0
            assert dump(name) == {
                keys.encode(keys.public_key(k)): hub.peer_network(i)
                for i, k in enumerate(h.peer_keys)
            }
    assert leftovers() == []


def test_bench_hub_prints_every_figure_for_each_plane_and_wireguard_go(tmp_path):
    out = tmp_path / "hub.json"
    argv = ["bench", "--hub", "30", "--handshakes", "100", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "tunnel", *argv],
        capture_output=True,
        text=True,
        env=pyvpn_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert [r["plane"] for r in results][:2] == ["native", "python"]
    assert results[2]["plane"].startswith("wireguard-go ")
    for r in results:
        assert r["wg_show_peers"] == 30
        assert r["handshakes"]["valid_responses"] == r["handshakes"]["responses"] > 0
    for r in results[:2]:
        assert r["routes"] == 1  # the hub's own /16
        assert r["rss_kib"] > 0 and r["up_s"] > 0 and r["pyvpn_show_s"] > 0
    assert "| handshakes: valid responses/s |" in done.stdout
    assert leftovers() == []


def test_peers_are_numbered_inside_the_prefix_past_the_hubs_own_address():
    first = ipaddress.ip_network(hub.peer_network(0))
    assert first.subnet_of(hub.HUB_ADDRESS.network)
    assert hub.HUB_ADDRESS.ip not in first


def test_the_rekeys_of_a_hubs_peers_alone_never_put_it_under_load():
    # Twice the rekey load of 600 peers is 10 handshakes a second: with the
    # threshold at 2, 10 initiations in a second still get responses, 12 do not.
    private = keys.generate_private_key()
    iface = Interface(private, under_load_threshold=2)
    initiators = [keys.generate_private_key() for _ in range(600)]
    for k in initiators:
        iface.add_peer(PeerConfig(public_key=keys.public_key(k)))
    initiations = prepare(initiators[:12], keys.public_key(private), 12)
    answers = [
        iface.receive_datagram(p.packet, ("127.1.0.1", 5000 + i), 100.0 + i / 100)
        for i, p in enumerate(initiations)
    ]
    kinds = [next(x for x in a if isinstance(x, Send)).data[0] for a in answers]
    assert kinds[:10] == [MESSAGE_RESPONSE] * 10
    assert kinds[10:] == [MESSAGE_COOKIE_REPLY] * 2


def test_a_peer_given_the_hubs_own_prefix_adds_no_route_of_its_own(running):
    ns, h, _ = running
    before = routes(ns, h.name)
    key = keys.encode(keys.public_key(keys.generate_private_key()))
    ns.run("wg", "set", h.name, "peer", key, "allowed-ips", str(hub.HUB_ADDRESS.network))
    assert routes(ns, h.name) == before
    ns.run("wg", "set", h.name, "peer", key, "remove")
    assert routes(ns, h.name) == before
