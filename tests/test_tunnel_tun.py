"""pyvpn tun tunnels between real network namespaces: real TUN devices, real UDP
over veth, real ping and TCP, real `wg show`."""

import json
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tunnel.lab.testbed import (
    INNER_A,
    INNER_A6,
    INNER_B,
    INNER_B6,
    UNDERLAY_A6,
    UNDERLAY_B6,
    device_name,
    poll_until,
    pyvpn_env,
    pyvpn_pair,
    pyvpn_status,
    reachable,
    start_daemon,
    start_pyvpn,
    uapi_socket,
    wait_for,
    wait_reachable,
    write_pair_configs,
)
from tunnel.protocol import keys

from .bed import UNREACHABLE_WITHIN, Testbed, star_bed, write_star_configs
from .conftest import ROOT, pyvpn
from .traffic import tcp_transfer


def test_ping_and_tcp_over_ipv4_and_ipv6_inside(bed, tmp_path, datapath):
    with pyvpn_pair(bed, tmp_path, "tun", datapath):
        wait_reachable(bed.a, INNER_B)
        wait_reachable(bed.a, INNER_B6)
        sent, received = tcp_transfer(bed.b, bed.a, INNER_B, 4 << 20)
        assert sent == received
        sent, received = tcp_transfer(bed.a, bed.b, INNER_A6, 1 << 20)
        assert sent == received


def test_ipv6_underlay(bed, tmp_path, datapath):
    with pyvpn_pair(
        bed, tmp_path, "tun", datapath, endpoints=(f"[{UNDERLAY_A6}]", f"[{UNDERLAY_B6}]")
    ) as (
        a,
        _,
    ):
        wait_reachable(bed.a, INNER_B)
        assert pyvpn_status(a.name)["peers"][0]["endpoint"] == f"[{UNDERLAY_B6}]:51820"


def test_show_and_wg_show_report_the_same_facts(bed, tmp_path, datapath):
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath, persistent_keepalive=7)
    with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b):
        wait_reachable(bed.a, INNER_B)
        s = pyvpn_status(a.name)
        peer = s["peers"][0]
        assert s["mode"] == "tun" and s["listen_port"] == 51820 and s["datapath"] == datapath
        assert peer["endpoint"] == "198.18.0.2:51820" and peer["persistent_keepalive"] == 7
        assert peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
        assert abs(peer["latest_handshake"] - time.time()) < 30
        wg = bed.a.run("wg", "show", a.name).stdout
        assert f"peer: {peer['public_key']}" in wg
        assert "endpoint: 198.18.0.2:51820" in wg
        assert "allowed ips: 10.10.0.2/32, fd10::2/128" in wg
        assert "latest handshake:" in wg and "transfer:" in wg
        assert "persistent keepalive: every 7 seconds" in wg
        dump = bed.a.run("wg", "show", a.name, "dump").stdout.splitlines()
        assert dump[0].split("\t")[1] == s["public_key"]
        text = pyvpn("show", a.name, netns=bed.a.name).stdout
        assert f"peer: {peer['public_key']}" in text and "latest handshake:" in text
        assert s["addresses"] == ["10.10.0.1/24", "fd10::1/64"]
        assert s["bridge"] is None and s["user"] is None and "mac_ageing" not in s
        assert "  address: 10.10.0.1/24, fd10::1/64\n" in text
        # No secret ever shows: the private key only in wg's UAPI for showconf.
        private = tomllib_private(path_a)
        assert private not in text and private not in json.dumps(s)


def tomllib_private(path):
    return tomllib.loads(path.read_text())["interface"]["private_key"]


@pytest.mark.parametrize("how", ["down", "SIGTERM", "SIGINT"])
def test_teardown_removes_device_addresses_routes_and_socket(bed, tmp_path, datapath, how):
    # 10.99.0.0/24 gets a route of its own; B's address, inside A's /24, needs none.
    allowed = [f"{INNER_B}/32", f"{INNER_B6}/128", "10.99.0.0/24"]
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath, peer_a={"allowed_ips": allowed})
    with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b):
        wait_reachable(bed.a, INNER_B)
        assert a.name in bed.a.run("ip", "-o", "link").stdout
        assert f"10.99.0.0/24 dev {a.name}" in bed.a.run("ip", "route").stdout
        if how == "down":
            result = pyvpn("down", a.name)
            assert result.returncode == 0, result.stderr
        else:
            a.proc.send_signal(getattr(signal, how))
        assert a.proc.wait(timeout=10) == 0
        assert a.name not in bed.a.run("ip", "-o", "link").stdout
        assert "10.10.0" not in bed.a.run("ip", "route").stdout
        assert "10.99.0" not in bed.a.run("ip", "route").stdout
        assert "fd10::" not in bed.a.run("ip", "-6", "route").stdout
        assert not uapi_socket(a.name).exists()


def test_sigterm_the_moment_the_socket_answers_still_tears_everything_down(bed, tmp_path, datapath):
    """A client may act, and a service manager stop the tunnel, as soon as its UAPI
    socket is there, while the rest still comes up: the stop waits for it and
    undoes it all."""
    path_a, _ = write_pair_configs(tmp_path, "tun", datapath)
    name = path_a.stem  # write_pair_configs names the file after the device
    for _ in range(5):
        a = start_daemon(
            bed.a, [sys.executable, "-m", "tunnel", "up", str(path_a)], name, pyvpn_env()
        )
        with a:
            assert poll_until(uapi_socket(name).exists, 20, poll=0.001)
            a.proc.send_signal(signal.SIGTERM)
            assert a.proc.wait(timeout=10) == 0, a.output()
        assert name not in bed.a.run("ip", "-o", "link").stdout
        assert not uapi_socket(name).exists()


def test_second_tunnel_with_same_name_is_refused_cleanly(bed, tmp_path, datapath):
    path_a, _ = write_pair_configs(tmp_path, "tun", datapath)
    with start_pyvpn(bed.a, path_a) as a:
        result = pyvpn("up", str(path_a), netns=bed.b.name)
        assert result.returncode == 1
        assert result.stderr == (
            f"pyvpn: {a.name}: a tunnel named {a.name} is already running (pid {a.proc.pid})\n"
        )
        assert a.alive()


@pytest.mark.netns
def test_hub_with_three_peers_routes_by_allowed_ips(tmp_path, datapath):
    with star_bed("hub") as bed:
        hub, spokes = bed.namespaces[0], bed.namespaces[1:]
        names = [device_name("pvhub", c) for c in "hxyz"]
        paths = write_star_configs(
            tmp_path, names, datapath,
            hub={"address": ["10.20.0.1/24"]},
            hub_peer=lambda i: {"allowed_ips": [f"10.20.0.{i + 2}/32"]},
            spoke=lambda i: {"address": [f"10.20.0.{i + 2}/24"]},
            spoke_peer=lambda i: {"allowed_ips": ["10.20.0.0/24"]},
        )  # fmt: skip
        hub.sysctl("net.ipv4.ip_forward", 1)
        daemons = [start_pyvpn(ns, p) for ns, p in zip([hub, *spokes], paths, strict=True)]
        try:
            for i in range(3):
                wait_reachable(hub, f"10.20.0.{i + 2}")
            # Spoke to spoke through the hub: the hub picks the peer by allowed_ips.
            wait_reachable(spokes[0], "10.20.0.4")
            sent, received = tcp_transfer(spokes[2], spokes[1], "10.20.0.4", 1 << 20)
            assert sent == received
            hub_status = pyvpn_status(names[0])
            assert all(p["rx_bytes"] > 0 and p["latest_handshake"] for p in hub_status["peers"])
        finally:
            for d in daemons:
                d.stop()


@pytest.mark.netns
def test_default_route_sends_everything_but_the_tunnel_itself_through_it(tmp_path, datapath):
    """allowed_ips 0.0.0.0/0: A reaches a host behind B that only B routes to, while A's
    own default route (the one the tunnel's datagrams need) leads elsewhere; `wg set`
    turns the policy off and on again."""

    with Testbed(n=3, tag="full") as bed:
        far = bed.namespaces[2]
        bed.link(bed.b, far, ["198.19.0.1/24"], ["198.19.0.2/24"])
        # B's endpoint is an address A reaches only through its main default route:
        # a default route through the tunnel would capture the tunnel's own datagrams.
        bed.b.add_address("lo", "198.18.9.2/32")
        # ...and B's datagrams come from there, so the endpoint stays beyond the gateway.
        bed.b.run("ip", "route", "replace", "198.18.0.0/24", "dev", "to-a", "src", "198.18.9.2")
        bed.a.run("ip", "route", "add", "default", "via", "198.18.0.2")
        # The far host answers only the tunnel's inner addresses, only through B.
        far.run("ip", "route", "add", "10.10.0.0/24", "via", "198.19.0.1")
        bed.b.sysctl("net.ipv4.ip_forward", 1)
        # Strict reverse-path filtering: replies from B come in on to-b, while an
        # unmarked lookup of their source leads into the tunnel.
        for conf in ("all", "to-b"):
            bed.a.sysctl(f"net.ipv4.conf.{conf}.rp_filter", 1)
        rules_before = bed.a.run("ip", "rule").stdout
        # What a killed run would have left: gone when the tunnel starts.
        bed.a.run(
            "ip", "rule", "add", "not", "fwmark", "51820", "table", "51820", "pref", "100",
            "proto", "245",
        )  # fmt: skip
        path_a, path_b = write_pair_configs(
            tmp_path,
            "tun",
            datapath,
            endpoints=("198.18.0.1", "198.18.9.2"),
            peer_a={"allowed_ips": ["0.0.0.0/0"]},
        )
        stale = f"pyvpn-{tomllib.loads(path_a.read_text())['interface']['name']}"
        bed.a.run(
            "nft", f"add table inet {stale}; add chain inet {stale} c; add rule inet {stale} c drop"
        )
        with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b):
            assert "chain c {" not in bed.a.run("nft", "list", "table", "inet", stale).stdout
            wait_reachable(bed.a, "198.19.0.2")
            wait_reachable(bed.a, INNER_B)
            sent, received = tcp_transfer(far, bed.a, "198.19.0.2", 1 << 20)
            assert sent == received
            status = pyvpn_status(a.name)
            assert status["fwmark"] == 51820 and status["peers"][0]["tx_bytes"] > 1 << 20
            shown = pyvpn("show", a.name, netns=bed.a.name).stdout
            assert "full tunnel: all IPv4 traffic but the tunnel's own" in shown
            assert "not from all fwmark 0xca6c lookup 51820" in bed.a.run("ip", "rule").stdout
            assert f"pyvpn-{a.name}" in bed.a.run("nft", "list", "tables").stdout
            # Its rules rely on the mark: `wg set` may not pull it away.
            unmarked = bed.a.run("wg", "set", a.name, "fwmark", "0", check=False)
            assert unmarked.returncode != 0 and "busy" in unmarked.stderr
            # The underlay's own neighbours stay outside the tunnel.
            route = bed.a.run("ip", "route", "get", "198.18.0.2").stdout
            assert "dev to-b" in route
            # `wg set` taking the default route away ends the policy; giving it back
            # brings it back, under the same mark.
            peer_b = status["peers"][0]["public_key"]
            bed.a.run("wg", "set", a.name, "peer", peer_b, "allowed-ips", f"{INNER_B}/32")
            assert bed.a.run("ip", "rule").stdout == rules_before
            assert bed.a.run("nft", "list", "tables").stdout == ""
            assert pyvpn_status(a.name)["full_tunnel"] == []
            assert not reachable(bed.a, "198.19.0.2", UNREACHABLE_WITHIN)
            wait_reachable(bed.a, INNER_B)
            bed.a.run("wg", "set", a.name, "peer", peer_b, "allowed-ips", "0.0.0.0/0")
            wait_reachable(bed.a, "198.19.0.2")
            assert pyvpn_status(a.name)["fwmark"] == 51820
            a.stop()
        assert bed.a.run("ip", "rule").stdout == rules_before
        assert bed.a.run("nft", "list", "tables").stdout == ""
        assert bed.a.run("ip", "route", "show", "table", "51820", check=False).stdout == ""


NFT_NAMES = """
import ipaddress, json, sys
from tunnel.host import nftables
name = sys.argv[1]
nftables.mark_replies(name, 0xCA6C, {6}, [ipaddress.ip_interface("fd10::1/64")])
kept = nftables.remove_leftovers(lambda n: n == name)
gone = nftables.remove_leftovers(lambda n: False)
print(json.dumps([kept, gone]))
"""


def test_a_device_name_with_plus_or_equals_gets_its_nft_table(bed):
    """A full tunnel's nftables table is named after its device, and wg-quick's
    names ('+', '=') are no nft identifiers: escaped, and read back as the name."""
    argv = bed.a.argv(sys.executable, "-c", NFT_NAMES, "wg+0=")
    done = subprocess.run(argv, capture_output=True, text=True, env=pyvpn_env(), timeout=30)
    assert done.returncode == 0, done.stderr
    # Kept while its device lives, removed once it is gone.
    assert json.loads(done.stdout) == [[], ["pyvpn-wg/2b0/3d"]]
    assert bed.a.run("nft", "list", "tables").stdout == ""


@pytest.mark.netns
def test_an_ipv6_default_route_makes_an_ipv6_full_tunnel(tmp_path):
    """::/0 over an IPv6 underlay: A reaches an IPv6 host behind B while its own IPv6
    default route, which the tunnel's datagrams need, leads elsewhere; IPv4 is left
    alone."""

    with Testbed(n=3, tag="full6") as bed:
        far = bed.namespaces[2]
        bed.link(bed.b, far, ["fd19::1/64"], ["fd19::2/64"])
        bed.b.add_address("lo", "fd18:9::2/128")
        bed.b.run(
            "ip", "-6", "route", "add", f"{UNDERLAY_A6}/128", "dev", "to-a", "src", "fd18:9::2"
        )
        bed.a.run("ip", "-6", "route", "add", "default", "via", UNDERLAY_B6)
        far.run("ip", "-6", "route", "add", "fd10::/64", "via", "fd19::1")
        bed.b.sysctl("net.ipv6.conf.all.forwarding", 1)
        rules4, rules6 = bed.a.run("ip", "-4", "rule").stdout, bed.a.run("ip", "-6", "rule").stdout
        path_a, path_b = write_pair_configs(
            tmp_path,
            endpoints=(f"[{UNDERLAY_A6}]", "[fd18:9::2]"),
            peer_a={"allowed_ips": ["::/0", f"{INNER_B}/32"]},
        )
        with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b):
            wait_reachable(bed.a, "fd19::2")
            assert pyvpn_status(a.name)["peers"][0]["endpoint"] == "[fd18:9::2]:51820"
            assert "not from all fwmark 0xca6c lookup 51820" in bed.a.run("ip", "-6", "rule").stdout
            assert bed.a.run("ip", "-4", "rule").stdout == rules4
            assert "ip6 daddr fd10::1" in bed.a.run("nft", "list", "ruleset").stdout
            a.stop()
        assert bed.a.run("ip", "-6", "rule").stdout == rules6
        assert bed.a.run("nft", "list", "tables").stdout == ""


def test_a_killed_full_tunnels_leftovers_go_when_the_next_tunnel_starts(bed, tmp_path):
    """SIGKILL leaves a full tunnel's ip rules and nftables table behind; the next
    pyvpn to start, here the same tunnel without a default route, removes them and
    nothing else: not a live policy of the same shape, not the user's own rules."""
    bed.a.run("ip", "route", "add", "192.0.2.0/24", "dev", bed.a_veth, "table", "99")
    bed.a.run("ip", "rule", "add", "not", "fwmark", "99", "table", "99", "pref", "200")
    # The user's own, of the same shape and with an empty table: not pyvpn's (no "proto 245").
    bed.a.run("ip", "rule", "add", "not", "fwmark", "98", "table", "98", "pref", "250")
    bed.a.run("ip", "rule", "add", "fwmark", "7", "table", "7", "pref", "300")
    rules_before = bed.a.run("ip", "rule").stdout
    path, _ = write_pair_configs(tmp_path, peer_a={"allowed_ips": ["0.0.0.0/0"]})
    a = start_pyvpn(bed.a, path)
    try:
        table = f"pyvpn-{a.name}"
        a.proc.kill()  # no teardown at all: the kernel closes the TUN fd
        a.proc.wait()
        rules = bed.a.run("ip", "rule").stdout
        assert "not from all fwmark 0xca6c lookup main suppress_prefixlength 0 proto 245" in rules
        assert "not from all fwmark 0xca6c lookup 51820 proto 245" in rules
        assert table in bed.a.run("nft", "list", "tables").stdout
        a.stop()
        path.write_text(path.read_text().replace('"0.0.0.0/0"', f'"{INNER_B}/32"'))
        a = start_pyvpn(bed.a, path)
        assert bed.a.run("ip", "rule").stdout == rules_before
        assert bed.a.run("nft", "list", "tables").stdout == ""
        assert pyvpn_status(a.name)["full_tunnel"] == []
        assert f"killed full tunnels left: 2 ip rules; nftables tables: inet {table}" in a.output()
    finally:
        a.stop()


def test_two_full_tunnels_each_keep_their_own_rules(bed, tmp_path):
    """The second full tunnel gets the next free table and its own pair of rules, so
    stopping the first leaves the second's in place."""
    rules_before = bed.a.run("ip", "rule").stdout
    paths = [
        write_pair_configs(
            tmp_path,
            names=(device_name("pvfull", side), device_name("pvfull", side + "b")),
            ports=(port, port),
            peer_a={"allowed_ips": ["0.0.0.0/0"]},
        )[0]
        for side, port in (("a", 51820), ("c", 51821))
    ]
    with start_pyvpn(bed.a, paths[0]) as first, start_pyvpn(bed.a, paths[1]) as second:
        assert pyvpn_status(second.name)["fwmark"] == 51821
        first.stop()
        rules = bed.a.run("ip", "rule").stdout
        assert "0xca6c" not in rules
        assert "not from all fwmark 0xca6d lookup main suppress_prefixlength 0" in rules
        assert "not from all fwmark 0xca6d lookup 51821" in rules
    assert bed.a.run("ip", "rule").stdout == rules_before


def test_mtu_is_taken_from_the_underlay_unless_given(bed, tmp_path):
    """As wg-quick: the underlay's MTU toward the endpoint less 80 bytes (1400 -> 1320),
    so full-size packets cross without the underlay fragmenting them."""
    for ns, dev in ((bed.a, bed.a_veth), (bed.b, bed.b_veth)):
        ns.link_up(dev, mtu=1400)
    path_a, path_b = write_pair_configs(tmp_path, interface_b={"mtu": 1280})
    with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b) as b:
        assert "mtu 1320 " in bed.a.run("ip", "link", "show", a.name).stdout
        assert "mtu 1280 " in bed.b.run("ip", "link", "show", b.name).stdout
        assert "MTU 1320 (the underlay's 1400 less 80)" in a.output()
        fits = ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(1320 - 28), INNER_B]
        wait_reachable(bed.a, INNER_B)
        assert bed.a.run(*fits, check=False).returncode == 0
        sent, received = tcp_transfer(bed.b, bed.a, INNER_B, 1 << 20)
        assert sent == received


def test_a_network_listed_by_two_peers_is_routed_once_to_the_later(bed, tmp_path, datapath):
    from tunnel.lab.testbed import render_config

    # Host addresses: no prefix of A's own covers B's, so B's network needs a route.
    own = {"address": [f"{INNER_A}/32", f"{INNER_A6}/128"]}
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath, interface_a=own)
    data = tomllib.loads(path_a.read_text())
    decoy = {
        "public_key": keys.encode(keys.public_key(keys.generate_private_key())),
        "allowed_ips": [f"{INNER_B}/32"],
    }
    # B, listed after the decoy, takes the network, as wg gives it to the last peer.
    path_a.write_text(render_config(data["interface"], [decoy, *data["peer"]]))
    with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b):
        wait_reachable(bed.a, INNER_B)
        routes = bed.a.run("ip", "route", "show", f"{INNER_B}/32").stdout
        assert routes.count(f"dev {a.name}") == 1, routes
        peers = {p["public_key"]: p["allowed_ips"] for p in pyvpn_status(a.name)["peers"]}
        assert peers[decoy["public_key"]] == []
        assert peers[data["peer"][0]["public_key"]][0] == f"{INNER_B}/32"
        assert "peer[1].allowed_ips: 10.10.0.2/32 is also in peer[0]'s" in a.output()


def test_table_puts_every_allowed_network_in_the_users_table_or_nowhere(bed, tmp_path):
    """wg-quick's Table: a number routes every allowed network, a default route too,
    in that table with no policy rules; "off" routes none."""
    allowed = [f"{INNER_B}/32", "10.99.0.0/24", "0.0.0.0/0"]
    path_a, path_b = write_pair_configs(
        tmp_path, interface_a={"table": 1234}, peer_a={"allowed_ips": allowed}
    )
    rules = bed.a.run("ip", "rule").stdout
    with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b) as b:
        table = bed.a.run("ip", "route", "show", "table", "1234").stdout
        assert all(f"{n.removesuffix('/32')} dev {a.name}" in table for n in allowed[:2])
        assert f"default dev {a.name}" in table
        assert f"dev {a.name}" not in bed.a.run("ip", "route", "show", "10.99.0.0/24").stdout
        assert bed.a.run("ip", "rule").stdout == rules
        assert bed.a.run("nft", "list", "tables").stdout == ""
        assert "routes: table 1234" in pyvpn("show", a.name, netns=bed.a.name).stdout
        peer = pyvpn_status(a.name)["peers"][0]["public_key"]
        bed.a.run("wg", "set", a.name, "peer", peer, "allowed-ips", f"{INNER_B}/32,10.98.0.0/24")
        table = bed.a.run("ip", "route", "show", "table", "1234").stdout
        assert "10.98.0.0/24" in table and "10.99.0.0/24" not in table and "default" not in table
        # Only table 1234 knows the way to 10.98.0.0/24: a rule of the user's uses it.
        bed.b.run("ip", "addr", "add", "10.98.0.1/32", "dev", b.name)
        assert not reachable(bed.a, "10.98.0.1", UNREACHABLE_WITHIN)
        bed.a.run("ip", "rule", "add", "to", "10.98.0.0/24", "lookup", "1234", "pref", "100")
        wait_reachable(bed.a, "10.98.0.1")
    path_a.write_text(path_a.read_text().replace("table = 1234", 'table = "off"'))
    with start_pyvpn(bed.a, path_a) as a:
        main = bed.a.run("ip", "route", "show", "dev", a.name).stdout
        assert "10.99.0.0/24" not in main and INNER_B not in main and "default" not in main
        assert bed.a.run("ip", "route", "show", "table", "1234").stdout == ""


def test_inner_source_outside_allowed_ips_is_dropped(bed, tmp_path, datapath):
    with pyvpn_pair(bed, tmp_path, "tun", datapath) as (a, b):
        wait_reachable(bed.a, INNER_B)
        # 10.10.0.77 is on A's tunnel device but not in B's allowed_ips for A.
        bed.a.run("ip", "addr", "add", "10.10.0.77/32", "dev", a.name)
        result = bed.a.run(
            "ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.10.0.77", INNER_B, check=False
        )
        assert result.returncode != 0 and " 0 received" in result.stdout
        assert pyvpn_status(b.name)["peers"][0]["drops"]["bad_source"] >= 3


CONNECT = """
import socket, sys, time
started = time.monotonic()
try:
    socket.create_connection((sys.argv[1], 80), timeout=10)
except OSError as e:
    print(e.strerror, round(time.monotonic() - started, 2))
"""


def test_an_address_no_peer_takes_is_unreachable_at_once(bed, tmp_path, datapath):
    """As with kernel WireGuard: a packet for an address inside the tunnel's subnet that
    no peer's allowed IPs cover gets ICMP unreachable, so ping says so and a TCP
    connect fails at once instead of timing out."""
    with pyvpn_pair(bed, tmp_path, "tun", datapath) as (a, _):
        wait_reachable(bed.a, INNER_B)
        ping = bed.a.run("ping", "-c", "1", "-W", "2", "10.10.0.77", check=False).stdout
        assert "From 10.10.0.77 icmp_seq=1 Destination Host Unreachable" in ping
        ping6 = bed.a.run("ping", "-c", "1", "-W", "2", "fd10::77", check=False).stdout
        assert "From fd10::77 icmp_seq=1 Destination unreachable: Address unreachable" in ping6
        refused = bed.a.run(sys.executable, "-c", CONNECT, "10.10.0.77").stdout.split()
        assert refused[:-1] == ["No", "route", "to", "host"] and float(refused[-1]) < 1
        assert pyvpn_status(a.name)["drops"]["no_route"] >= 3


def test_replayed_transport_packets_are_dropped(bed, tmp_path, datapath):
    # A talks to B through a relay that sends every datagram a second time 30 ms later.
    relay = bed.a.popen(
        sys.executable,
        "-m",
        "tests.relay",
        "198.18.0.1:40000",
        "198.18.0.2:51820",
        "--replay-ms",
        "30",
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )
    try:
        assert relay.stdout.readline().strip() == "ready"
        with pyvpn_pair(
            bed,
            tmp_path,
            "tun",
            datapath,
            peer_a={"endpoint": "198.18.0.1:40000"},
            peer_b={"endpoint": None},
        ) as (_, b):
            wait_reachable(bed.a, INNER_B)
            result = bed.a.run("ping", "-c", "10", "-i", "0.1", INNER_B)
            assert " 0% packet loss" in result.stdout and "DUP!" not in result.stdout
            drops = pyvpn_status(b.name)["peers"][0]["drops"]
            assert drops["replay_or_forged"] >= 10
            # The replayed initiation was refused too, by its timestamp.
            assert pyvpn_status(b.name)["drops"].get("replayed_initiation", 0) >= 1
    finally:
        relay.terminate()
        relay.wait()


def test_roaming_follows_the_new_underlay_address(bed, tmp_path, datapath):
    with pyvpn_pair(bed, tmp_path, "tun", datapath) as (_, b):
        wait_reachable(bed.a, INNER_B)
        bed.a.run("ip", "addr", "del", "198.18.0.1/24", "dev", bed.a_veth)
        bed.a.run("ip", "addr", "add", "198.18.0.11/24", "dev", bed.a_veth)
        wait_reachable(bed.a, INNER_B)
        assert pyvpn_status(b.name)["peers"][0]["endpoint"] == "198.18.0.11:51820"
        # B reaches A at its new address without A sending first.
        wait_reachable(bed.b, INNER_A)


def test_roaming_from_ipv4_to_ipv6_is_followed_and_shown(bed, tmp_path, datapath):
    """A's packets start coming from its IPv6 underlay address (it was told B's
    IPv6 endpoint): B follows it to the other family, shows it, and its traffic
    to A takes the new path once the old one is gone."""
    with pyvpn_pair(bed, tmp_path, "tun", datapath) as (a, b):
        wait_reachable(bed.a, INNER_B)
        public_b = pyvpn_status(b.name)["public_key"]
        bed.a.run("wg", "set", a.name, "peer", public_b, "endpoint", f"[{UNDERLAY_B6}]:51820")
        wait_reachable(bed.a, INNER_B)
        moved = f"[{UNDERLAY_A6}]:51820"
        assert pyvpn_status(b.name)["peers"][0]["endpoint"] == moved
        assert f"endpoint: {moved}" in pyvpn("show", b.name, netns=bed.b.name).stdout
        assert f"endpoint: {moved}" in bed.b.run("wg", "show", b.name).stdout
        # No IPv4 path left between them: B's replies can only take the new one.
        bed.a.run("ip", "addr", "del", "198.18.0.1/24", "dev", bed.a_veth)
        wait_reachable(bed.b, INNER_A)
        sent, received = tcp_transfer(bed.b, bed.a, INNER_B, 1 << 20)
        assert sent == received


def test_an_endpoint_given_by_name_follows_the_name(bed, tmp_path, datapath, monkeypatch):
    """A names B's endpoint by a host name, and B knows no endpoint for A, so it never
    sends first. The name cannot be resolved when A starts (no DNS yet, as at boot),
    then points at the wrong address (as DNS does for a while after a server moves),
    then at B: A follows each step, and its persistent keepalive brings the tunnel
    up at the last."""
    monkeypatch.setenv("PYVPN_TIMER_SCALE", "0.05")  # names looked at every 1.5 s
    etc = Path("/etc/netns") / bed.a.name  # `ip netns exec` mounts these over /etc's
    etc.mkdir(parents=True)
    hosts = etc / "hosts"
    try:
        # A DNS server that refuses at once, on A's own loopback: a temporary failure.
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        hosts.write_text("127.0.0.1 localhost\n")
        with pyvpn_pair(
            bed,
            tmp_path,
            "tun",
            datapath,
            peer_a={"endpoint": "pvpeer-b.test:51820", "persistent_keepalive": 1},
            peer_b={"endpoint": None},
        ) as (a, _):
            assert "cannot resolve 'pvpeer-b.test' for now" in a.output()
            peer = pyvpn_status(a.name)["peers"][0]
            assert peer["endpoint"] is None
            assert peer["endpoint_name"] == "pvpeer-b.test:51820"
            shown = pyvpn("show", a.name, netns=bed.a.name).stdout
            assert "endpoint: none yet (pvpeer-b.test:51820 does not resolve)" in shown
            # In place, not replaced: the mount holds the file, not its name.
            hosts.write_text("198.18.0.99 pvpeer-b.test\n")

            def endpoint() -> str | None:
                return pyvpn_status(a.name)["peers"][0]["endpoint"]

            wait_for(a, lambda: endpoint() == "198.18.0.99:51820", "it resolved the name", 10)
            hosts.write_text("198.18.0.2 pvpeer-b.test\n")
            # Nothing in A sends: its persistent keepalive goes to each new address at
            # once, its handshakes to .99 fail, so it looks again and finds B; then B
            # reaches A.
            wait_reachable(bed.b, INNER_A, timeout=20)
            assert endpoint() == "198.18.0.2:51820"
            assert (
                "pvpeer-b.test:51820 now resolves to 198.18.0.2:51820 (was 198.18.0.99:51820)"
                in a.output()
            )
            shown = pyvpn("show", a.name, netns=bed.a.name).stdout
            assert "endpoint: 198.18.0.2:51820 (pvpeer-b.test:51820)" in shown
    finally:
        shutil.rmtree(etc)
