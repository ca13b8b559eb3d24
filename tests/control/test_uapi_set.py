"""Changing running tunnels with the real wireguard-tools: `wg set`, `wg setconf`
and `wg syncconf` over pyvpn's UAPI socket, in namespaces, on both data planes.
What a user sees: traffic starts or stops, `wg show` and the kernel's routes follow,
and a refused change says why and changes nothing."""

import contextlib
import errno
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator

from tunnel.control import uapi_client
from tunnel.lab.testbed import (
    INNER_A,
    INNER_A6,
    INNER_B,
    UNDERLAY_A,
    UNDERLAY_B,
    Namespace,
    pyvpn_status,
    reachable,
    render_config,
    start_pyvpn,
    uapi_socket,
    wait_reachable,
    write_pair_configs,
)
from tunnel.protocol import keys

from ..bed import UNREACHABLE_WITHIN
from ..conftest import pyvpn
from ..traffic import iperf3_server, tcp_transfer


def wg(ns: Namespace, *argv: str, check: bool = True):
    return ns.run("wg", *argv, check=check)


def public_of(path) -> str:
    private = keys.decode(tomllib.loads(path.read_text())["interface"]["private_key"])
    return keys.encode(keys.public_key(private))


def peers_of(ns: Namespace, name: str) -> dict[str, list[str]]:
    """wg show NAME dump: each peer's public key and its allowed IPs."""
    rows = wg(ns, "show", name, "dump").stdout.splitlines()[1:]
    return {r.split("\t")[0]: sorted(r.split("\t")[3].split(",")) for r in rows}


@contextlib.contextmanager
def holding_udp_port(ns: Namespace, port: int) -> Iterator[None]:
    """Another program bound to UDP `port` in `ns` meanwhile."""
    code = (
        "import socket, sys; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
        f"s.bind(('::', {port})); print('bound', flush=True); sys.stdin.read()"
    )
    holder = ns.popen(sys.executable, "-c", code, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"bound\n"
        yield
    finally:
        holder.kill()
        holder.wait()


def routes(ns: Namespace, name: str) -> str:
    return ns.run("ip", "route", "show", "dev", name).stdout


def test_wg_set_adds_changes_and_removes_peers_of_a_running_tunnel(bed, tmp_path, datapath):
    # B starts knowing some other peer, not A: A's handshakes go unanswered.
    stranger = keys.encode(keys.public_key(keys.generate_private_key()))
    path_a, path_b = write_pair_configs(
        tmp_path, "tun", datapath, peer_b={"public_key": stranger, "allowed_ips": ["10.66.0.0/24"]}
    )
    key_a = public_of(path_a)
    with start_pyvpn(bed.a, path_a), start_pyvpn(bed.b, path_b) as b:
        assert not reachable(bed.a, INNER_B, UNREACHABLE_WITHIN)
        wg(
            bed.b,
            "set",
            b.name,
            "peer",
            key_a,
            "endpoint",
            f"{UNDERLAY_A}:51820",
            "allowed-ips",
            f"{INNER_A}/32,{INNER_A6}/128,10.77.0.0/24",
        )
        wait_reachable(bed.a, INNER_B)
        wait_reachable(bed.b, INNER_A)
        assert peers_of(bed.b, b.name)[key_a] == sorted(
            [f"{INNER_A}/32", f"{INNER_A6}/128", "10.77.0.0/24"]
        )
        assert "10.77.0.0/24 " in routes(bed.b, b.name)
        assert "10.66.0.0/24 " in routes(bed.b, b.name)

        wg(bed.b, "set", b.name, "peer", stranger, "remove")
        assert list(peers_of(bed.b, b.name)) == [key_a]
        assert "10.66.0.0/24" not in routes(bed.b, b.name)

        # allowed-ips replaces the list: the dropped network's route goes with it.
        wg(bed.b, "set", b.name, "peer", key_a, "allowed-ips", f"{INNER_A}/32")
        assert peers_of(bed.b, b.name)[key_a] == [f"{INNER_A}/32"]
        assert "10.77.0.0/24" not in routes(bed.b, b.name)
        assert reachable(bed.a, INNER_B)

        wg(bed.b, "set", b.name, "peer", key_a, "remove")
        assert peers_of(bed.b, b.name) == {}
        assert not reachable(bed.a, INNER_B, UNREACHABLE_WITHIN)
        assert b.alive()


def test_wg_set_adds_and_removes_a_peer_of_a_running_tap_tunnel(bed, tmp_path, datapath):
    stranger = keys.encode(keys.public_key(keys.generate_private_key()))
    path_a, path_b = write_pair_configs(tmp_path, "tap", datapath, peer_b={"public_key": stranger})
    with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b) as b:
        # 2 s, not UNREACHABLE_WITHIN: after 1 s the kernel is still resolving
        # INNER_B (its neighbour entry INCOMPLETE), and under load (-n 2) the wait
        # below then failed at once despite the flush.
        assert not reachable(bed.a, INNER_B, 2)
        wg(bed.b, "set", b.name, "peer", public_of(path_a), "endpoint", f"{UNDERLAY_A}:51820")
        # The failed ARP entry would fail the next ping at once: ask again.
        bed.a.run("ip", "neigh", "flush", "dev", a.name)
        wait_reachable(bed.a, INNER_B)
        # Frames are switched by MAC address: allowed IPs are refused, not ignored.
        ips = wg(bed.b, "set", b.name, "peer", public_of(path_a), "allowed-ips", "10.0.0.0/8",
                 check=False)  # fmt: skip
        assert ips.returncode != 0 and "Invalid argument" in ips.stderr
        assert "tap mode switches by MAC address" in b.output()
        wg(bed.b, "set", b.name, "peer", public_of(path_a), "remove")
        assert not reachable(bed.a, INNER_B, UNREACHABLE_WITHIN)


def test_setconf_round_trips_and_a_new_private_key_takes_over(bed, tmp_path, datapath):
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath, persistent_keepalive=5)
    with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b) as b:
        wait_reachable(bed.a, INNER_B)
        # What `wg showconf` prints, `wg setconf` and `wg syncconf` take back unchanged.
        conf = tmp_path / "b.conf"
        conf.write_text(wg(bed.b, "showconf", b.name).stdout)
        for verb in ("setconf", "syncconf"):
            wg(bed.b, verb, b.name, str(conf))
            assert list(peers_of(bed.b, b.name)) == [public_of(path_a)]
            wait_reachable(bed.a, INNER_B)

        # B takes a new key: A cannot reach it until A is told the new public key.
        old_b = public_of(path_b)
        new_private = keys.generate_private_key()
        (tmp_path / "new.key").write_text(keys.encode(new_private))
        wg(bed.b, "set", b.name, "private-key", str(tmp_path / "new.key"))
        new_b = keys.encode(keys.public_key(new_private))
        assert wg(bed.b, "show", b.name, "public-key").stdout.strip() == new_b
        assert not reachable(bed.a, INNER_B, UNREACHABLE_WITHIN)
        wg(
            bed.a,
            "set",
            a.name,
            "peer",
            old_b,
            "remove",
            "peer",
            new_b,
            "endpoint",
            f"{UNDERLAY_B}:51820",
            "allowed-ips",
            f"{INNER_B}/32",
        )
        wait_reachable(bed.a, INNER_B)
        assert "persistent keepalive: every 5 seconds" in wg(bed.b, "show", b.name).stdout


def test_pyvpn_reload_applies_a_changed_config_and_keeps_sessions(bed, tmp_path, datapath):
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath)
    with start_pyvpn(bed.a, path_a), start_pyvpn(bed.b, path_b) as b:
        wait_reachable(bed.a, INNER_B)
        handshake = pyvpn_status(b.name)["peers"][0]["latest_handshake"]
        # The config grows a network for A and a second peer, then B reloads it.
        config = tomllib.loads(path_b.read_text())
        config["peer"][0]["allowed_ips"].append("10.77.0.0/24")
        stranger = keys.encode(keys.public_key(keys.generate_private_key()))
        config["peer"].append({"public_key": stranger, "allowed_ips": ["10.66.0.0/24"]})
        path_b.write_text(render_config(config["interface"], config["peer"]))
        reload = pyvpn("reload", str(path_b))
        assert reload.returncode == 0, reload.stderr
        assert reload.stdout == f"{b.name}: reloaded from {path_b}: peers added 1, removed 0\n"
        peers = peers_of(bed.b, b.name)
        assert set(peers) == {public_of(path_a), stranger}
        assert "10.77.0.0/24" in peers[public_of(path_a)]
        assert "10.77.0.0/24 " in routes(bed.b, b.name)
        assert reachable(bed.a, INNER_B)
        # A stayed a peer: same session, no new handshake.
        after = next(p for p in pyvpn_status(b.name)["peers"] if p["public_key"] != stranger)
        assert after["latest_handshake"] == handshake

        # Back to the first config: the stranger goes, sessions still stay.
        config["peer"].pop()
        path_b.write_text(render_config(config["interface"], config["peer"]))
        assert "peers added 0, removed 1" in pyvpn("reload", str(path_b)).stdout
        assert list(peers_of(bed.b, b.name)) == [public_of(path_a)]

        # What a reload cannot do, it says, and changes nothing.
        tap = dict(config["interface"], mode="tap")
        path_b.write_text(render_config(tap, [{"public_key": stranger}]))
        refused = pyvpn("reload", str(path_b))
        assert refused.returncode == 1
        assert refused.stderr == (
            f"pyvpn: {b.name} runs in tun mode, {path_b} says tap: restart it to change the mode\n"
        )
        moved = dict(config["interface"], listen_port=4000)
        path_b.write_text(render_config(moved, config["peer"]))
        with holding_udp_port(bed.b, 4000):
            refused = pyvpn("reload", str(path_b))
        assert refused.returncode == 1
        assert refused.stderr == (
            f"pyvpn: {b.name}: set=1 failed: Address already in use (the tunnel's log says why)\n"
        )
        assert "cannot listen on UDP port 4000: Address already in use" in b.output()
        # What only a restart applies, it names; the rest of the config still applies.
        changed = dict(config["interface"], mtu=1300, address=["10.10.0.9/24"])
        path_b.write_text(render_config(changed, config["peer"]))
        unapplied = pyvpn("reload", str(path_b))
        assert unapplied.returncode == 0, unapplied.stderr
        assert unapplied.stderr.splitlines() == [
            f"pyvpn: {b.name} runs with mtu 1420, {path_b} says 1300: restart it to apply that",
            f"pyvpn: {b.name} runs with address 10.10.0.2/24, fd10::2/64, {path_b} says "
            "10.10.0.9/24: restart it to apply that",
        ]
        assert pyvpn_status(b.name)["mtu"] == 1420
        gone = dict(config["interface"], name="pvnotthere")
        path_b.write_text(render_config(gone, config["peer"]))
        refused = pyvpn("reload", str(path_b))
        assert refused.returncode == 1 and "no tunnel named pvnotthere" in refused.stderr
        assert list(peers_of(bed.b, b.name)) == [public_of(path_a)]


def test_reload_under_a_tcp_stream_drops_no_packet(bed, tmp_path, datapath):
    """Every reload hands each peer's allowed IPs to the plane again; they are swapped
    whole, so no packet in flight finds its peer missing meanwhile."""
    # The kernel's router solicitations would be counted as no_route: none, so the
    # count is the test's.
    bed.a.sysctl("net.ipv6.conf.default.router_solicitations", 0)
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath)
    with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b):
        wait_reachable(bed.a, INNER_B)
        before = pyvpn_status(a.name)["drops"].get("no_route", 0)
        with iperf3_server(bed.b):
            client = bed.a.popen("iperf3", "-c", INNER_B, "-t", "6", stdout=subprocess.DEVNULL)
            for _ in range(15):
                assert pyvpn("reload", str(path_a)).returncode == 0
            assert client.wait(timeout=30) == 0
        status = pyvpn_status(a.name)
        assert status["drops"].get("no_route", 0) == before, status["drops"]
        assert status["peers"][0]["drops"]["bad_source"] == 0, status["peers"][0]["drops"]


def test_wg_set_listen_port_moves_the_running_tunnel(bed, tmp_path, datapath):
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath)
    with start_pyvpn(bed.a, path_a) as a, start_pyvpn(bed.b, path_b) as b:
        wait_reachable(bed.a, INNER_B)
        wg(bed.b, "set", b.name, "listen-port", "4001")
        assert wg(bed.b, "show", b.name, "listen-port").stdout == "4001\n"
        listening = bed.b.run("ss", "-Huln").stdout
        assert ":4001 " in listening and ":51820 " not in listening
        # A still sends to 51820 until B's next datagram, from 4001, roams it over.
        wait_reachable(bed.b, INNER_A)
        assert wg(bed.a, "show", a.name, "endpoints").stdout.endswith(f"{UNDERLAY_B}:4001\n")
        sent, received = tcp_transfer(bed.b, bed.a, INNER_B, 1 << 20)
        assert sent == received


def test_a_low_order_key_refuses_the_whole_request(bed, tmp_path, datapath):
    """The request that once answered "Protocol error", logged a traceback and
    removed the first peer anyway: now nothing of it is applied, on either plane."""
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath)
    key_a = public_of(path_a)
    with start_pyvpn(bed.a, path_a), start_pyvpn(bed.b, path_b) as b:
        wait_reachable(bed.a, INNER_B)
        before = wg(bed.b, "showconf", b.name).stdout
        zero = keys.encode(bytes(32))
        argv = ("set", b.name, "peer", key_a, "remove", "peer", zero, "allowed-ips", "10.99.0.0/24")
        result = wg(bed.b, *argv, check=False)
        assert result.returncode != 0
        assert "low-order point" in b.output() and "Traceback" not in b.output()
        assert wg(bed.b, "showconf", b.name).stdout == before
        assert list(peers_of(bed.b, b.name)) == [key_a]
        assert reachable(bed.a, INNER_B)  # the peer also stays in the data plane
        assert b.alive()


def test_refused_changes_say_why_and_change_nothing(bed, tmp_path, datapath):
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath)
    with start_pyvpn(bed.a, path_a), start_pyvpn(bed.b, path_b) as b:
        wait_reachable(bed.a, INNER_B)
        before = wg(bed.b, "showconf", b.name).stdout

        # A request that goes bad halfway is refused whole: the valid first half
        # (a new peer) is not applied either.
        new_peer = keys.public_key(keys.generate_private_key()).hex()
        reply = uapi_client.exchange(
            b.name, f"set=1\npublic_key={new_peer}\nallowed_ip=10.88.0.0/24\nendpoint=x\n\n"
        )
        assert reply == "errno=-22\n\n"
        assert "set refused: endpoint" in b.output()
        assert wg(bed.b, "showconf", b.name).stdout == before
        assert "10.88.0.0" not in routes(bed.b, b.name)

        # fwmark is set on the live socket and reported; traffic keeps flowing.
        wg(bed.b, "set", b.name, "fwmark", "0x42")
        assert "fwmark: 0x42" in wg(bed.b, "show", b.name).stdout
        assert "fwmark: 0x42" in pyvpn("show", b.name, netns=bed.b.name).stdout
        assert reachable(bed.a, INNER_B)
        wg(bed.b, "set", b.name, "fwmark", "0")
        assert "fwmark" not in wg(bed.b, "show", b.name).stdout


def test_a_route_the_kernel_refuses_leaves_peer_fwmark_and_routes_as_they_were(
    bed, tmp_path, datapath
):
    """With IPv6 off in B's namespace, the IPv6 route of a `wg set` cannot go in:
    the whole request is refused with the kernel's reason; the fwmark and the
    listen port it also set and the IPv4 route that did go in are taken back, and
    A keeps its networks."""
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath)
    key_a = public_of(path_a)
    with start_pyvpn(bed.a, path_a), start_pyvpn(bed.b, path_b) as b:
        wait_reachable(bed.a, INNER_B)
        bed.b.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
        before, routed = wg(bed.b, "showconf", b.name).stdout, routes(bed.b, b.name)
        shown = pyvpn("show", b.name, netns=bed.b.name).stdout
        argv = ("listen-port", "4003", "fwmark", "0x42", "peer", key_a)
        argv += ("allowed-ips", "fd00:1::/64,10.83.0.2/32")
        result = wg(bed.b, "set", b.name, *argv, check=False)
        assert result.returncode != 0 and "Permission denied" in result.stderr
        assert "cannot add route fd00:1::/64" in b.output()
        assert wg(bed.b, "showconf", b.name).stdout == before
        assert "fwmark" not in wg(bed.b, "show", b.name).stdout
        assert ":4003 " not in bed.b.run("ss", "-Huln").stdout
        assert routes(bed.b, b.name) == routed and "10.83.0.2" not in routed
        assert (
            pyvpn("show", b.name, netns=bed.b.name).stdout.split("\n\n")[0]
            == (shown.split("\n\n")[0])
        )
        assert reachable(bed.a, INNER_B) and reachable(bed.b, INNER_A)


def test_a_listen_port_taken_refuses_the_fwmark_sent_with_it(bed, tmp_path, datapath):
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath)
    with start_pyvpn(bed.a, path_a), start_pyvpn(bed.b, path_b) as b:
        wait_reachable(bed.a, INNER_B)
        before = wg(bed.b, "showconf", b.name).stdout
        with holding_udp_port(bed.b, 4002):
            argv = ("set", b.name, "fwmark", "0x42", "listen-port", "4002")
            result = wg(bed.b, *argv, check=False)
        assert result.returncode != 0 and "Address already in use" in result.stderr
        assert wg(bed.b, "showconf", b.name).stdout == before
        assert wg(bed.b, "show", b.name, "fwmark").stdout == "off\n"
        assert wg(bed.b, "show", b.name, "listen-port").stdout == "51820\n"
        assert ":4002 " not in bed.b.run("ss", "-Huln").stdout
        assert reachable(bed.a, INNER_B)


def test_a_line_over_64_kib_gets_an_errno_and_the_tunnel_serves_on(bed, tmp_path, datapath):
    """A set request whose line overruns the reader: an errno reply, nothing
    applied, and the same connection answers the next operation."""
    path_a, path_b = write_pair_configs(tmp_path, "tun", datapath)
    with start_pyvpn(bed.a, path_a), start_pyvpn(bed.b, path_b) as b:
        wait_reachable(bed.a, INNER_B)
        before = wg(bed.b, "showconf", b.name).stdout
        key_a = bytes.fromhex(uapi_client.request(b.name, "get=1")["public_key"])
        huge = f"public_key={key_a.hex()}\nallowed_ip=10.84.0.0/24\nendpoint=" + "1" * 200_000
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(uapi_socket(b.name)))
            sock.sendall(f"set=1\n{huge}\n\nget=1\n\n".encode())
            replies = b""
            while not replies.endswith(b"errno=0\n\n"):
                chunk = sock.recv(1 << 16)
                assert chunk, replies
                replies += chunk
        refused, _, got = replies.decode().partition("\n\n")
        assert refused == f"errno={-errno.EMSGSIZE}"
        assert got.startswith("private_key=") and f"public_key={key_a.hex()}" in got
        assert "a line over 64 KiB" in b.output() and "Traceback" not in b.output()
        assert wg(bed.b, "showconf", b.name).stdout == before
        assert reachable(bed.a, INNER_B) and b.alive()
