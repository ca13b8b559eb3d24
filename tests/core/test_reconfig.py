"""The UAPI `set=1` request (wireguard.com/xplatform) parsed and applied to the
sans-IO core: the text wg sends, what is refused and why, and what a change does
to peers, sessions, routes and timers. The namespace side is tests/control/test_uapi_set.py."""

import errno
import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.control.config import ConfigError, parse
from tunnel.control.uapi import check, parse_set
from tunnel.control.uapi_client import sync_request
from tunnel.core.actions import KeypairsCleared, Send, SendBatch
from tunnel.core.reconfig import Change, IPEdit, PeerChange, Refused, apply
from tunnel.protocol import keys
from tunnel.protocol.constants import REKEY_TIMEOUT
from tunnel.protocol.peer_config import PeerConfig
from tunnel.protocol.timers import Timer

from ..hostile import Forger
from ..packets import ipv4_packet
from ..simnet import K1, K2, SimNet, pair

PSK = bytes([7] * 32)
net4 = ipaddress.ip_network


def peer_with_everything(key, endpoint, networks):
    """A peer section setting every key, with PSK and a 25 s keepalive."""
    return PeerChange(
        key,
        preshared_key=PSK,
        endpoint=endpoint,
        persistent_keepalive=25,
        replace_allowed_ips=True,
        allowed_ips=[IPEdit(net4(n)) for n in networks],
    )


def test_parses_what_wg_set_sends():
    # `wg set wg0 fwmark 7 peer K1 preshared-key F endpoint [fd00::1]:51820
    #  persistent-keepalive 25 allowed-ips 10.1.0.0/16,fd01::/64 peer K2 remove`
    change = parse_set(
        [
            "fwmark=7",
            f"public_key={K1.hex()}",
            f"preshared_key={PSK.hex()}",
            "endpoint=[fd00::1]:51820",
            "persistent_keepalive_interval=25",
            "replace_allowed_ips=true",
            "allowed_ip=10.1.0.0/16",
            "allowed_ip=fd01::/64",
            f"public_key={K2.hex()}",
            "remove=true",
        ]
    )
    assert change.fwmark == 7 and change.private_key is None and not change.replace_peers
    first, second = change.peers
    assert first == peer_with_everything(K1, ("fd00::1", 51820), ["10.1.0.0/16", "fd01::/64"])
    assert second == PeerChange(K2, remove=True)


def test_parses_setconf_and_newer_wg_removals():
    change = parse_set(
        [
            f"private_key={K1.hex()}",
            "listen_port=51820",
            "replace_peers=true",
            f"public_key={K2.hex()}",
            "protocol_version=1",
            "update_only=true",
            "allowed_ip=-10.2.0.0/24",  # newer wg: remove just this one
            "allowed_ip=10.3.0.0/24",
        ]
    )
    assert change.private_key == K1 and change.listen_port == 51820 and change.replace_peers
    (peer,) = change.peers
    assert peer.update_only
    assert peer.allowed_ips == [IPEdit(net4("10.2.0.0/24"), True), IPEdit(net4("10.3.0.0/24"))]
    assert parse_set(["fwmark="]).fwmark == 0  # older wg's way to clear it


@pytest.mark.parametrize(
    ("lines", "code", "reason"),
    [
        (["no equals sign"], errno.EPROTO, "not key=value"),
        (["private_key=xyz"], errno.EINVAL, "not 64 hex digits"),
        (["listen_port=65536"], errno.EINVAL, "from 0 to 65535"),
        (["listen_port=-1"], errno.EINVAL, "listen_port"),
        (["fwmark=" + "9" * 5000], errno.EINVAL, "fwmark"),
        (["replace_peers=yes"], errno.EINVAL, "only true"),
        (["endpoint=1.2.3.4:5"], errno.EINVAL, "unknown interface key"),
        ([f"public_key={K1.hex()}", "listen_port=1"], errno.EINVAL, "unknown peer key"),
        ([f"public_key={K1.hex()}", "endpoint=host.example:51820"], errno.EINVAL, "endpoint"),
        ([f"public_key={K1.hex()}", "endpoint=1.2.3.4:0"], errno.EINVAL, "out of range"),
        ([f"public_key={K1.hex()}", "allowed_ip=10.0.0.0/33"], errno.EINVAL, "not a network"),
        ([f"public_key={K1.hex()}", "protocol_version=2"], errno.EINVAL, "only 1"),
        ([f"public_key={K1.hex()[:-1]} "], errno.EINVAL, "not 64 hex"),
    ],
)
def test_bad_lines_are_refused_with_the_errno_wg_reports(lines, code, reason):
    with pytest.raises(Refused) as refused:
        parse_set(lines)
    assert refused.value.errno == code and reason in str(refused.value)


@given(st.lists(st.text(max_size=80), max_size=12))
def test_arbitrary_requests_parse_or_are_refused(lines):
    try:
        parse_set(lines)
    except Refused as e:
        assert e.errno in (errno.EINVAL, errno.EPROTO) and "\n" not in str(e)


UAPI_KEYS = [
    "private_key", "listen_port", "fwmark", "replace_peers", "public_key", "remove",
    "update_only", "preshared_key", "endpoint", "persistent_keepalive_interval",
    "replace_allowed_ips", "allowed_ip", "protocol_version", "pyvpn_endpoint_name",
]  # fmt: skip


@given(st.lists(st.tuples(st.sampled_from(UAPI_KEYS), st.text(max_size=70)), max_size=12))
def test_every_value_parser_refuses_garbage_cleanly(pairs):
    try:
        parse_set([f"{k}={v}" for k, v in pairs])
    except Refused as e:
        assert e.errno in (errno.EINVAL, errno.EPROTO)


def test_reload_request_round_trips_through_the_parser():
    config = parse(
        {
            "interface": {"private_key": keys.encode(K1), "listen_port": 51820, "fwmark": 9},
            "peer": [
                {
                    "public_key": keys.encode(K2),
                    "preshared_key": keys.encode(PSK),
                    "endpoint": "[fd00::2]:51820",
                    "allowed_ips": ["10.0.0.2/32", "fd10::/64"],
                    "persistent_keepalive": 25,
                }
            ],
        }
    )
    gone = bytes([9] * 32)
    text = sync_request(config, [K2, gone])
    assert text.startswith("set=1\n")
    change = parse_set(text.splitlines()[1:])
    assert change == Change(
        private_key=K1,
        listen_port=51820,
        fwmark=9,
        peers=[
            PeerChange(gone, remove=True),
            peer_with_everything(K2, ("fd00::2", 51820), ["10.0.0.2/32", "fd10::/64"]),
        ],
    )
    # Not replace_peers: a peer that stays keeps its session.
    assert "replace_peers" not in text


def test_an_endpoint_name_travels_with_reload_and_an_address_alone_drops_it():
    config = parse(
        {
            "interface": {"private_key": keys.encode(K1)},
            "peer": [{"public_key": keys.encode(K2), "endpoint": "localhost:51820"}],
        }
    )
    assert config.peers[0].endpoint_name == ("localhost", 51820)
    text = sync_request(config, [])
    assert "\npyvpn_endpoint_name=localhost:51820\n" in text
    change = parse_set(text.splitlines()[1:])
    assert change.peers[0].endpoint_name == ("localhost", 51820)
    _net, a, b = pair()
    peer = a.iface.peers[b.iface.identity.public_key]
    named = PeerChange(peer.public_key, endpoint=("198.18.0.9", 51820), endpoint_name=("b.test", 1))
    apply(a.iface, Change(peers=[named]), 0.0)
    assert (peer.endpoint, peer.endpoint_name) == (("198.18.0.9", 51820), ("b.test", 1))
    # `wg set ... endpoint ADDRESS` (no name): the address is the user's, not resolved again.
    apply(a.iface, Change(peers=[PeerChange(peer.public_key, endpoint=("198.18.0.9", 51820))]), 0)
    assert peer.endpoint_name is None
    for bad in ("198.18.0.9:51820", "b.test", "b test:1", "[fd00::1]:1"):
        with pytest.raises(Refused):
            parse_set([f"public_key={K2.hex()}", f"pyvpn_endpoint_name={bad}"])


def test_a_peer_added_at_runtime_handshakes_and_carries_traffic():
    net, a, _b = pair()
    c = net.node("c", "198.18.0.3")
    c.iface.add_peer(
        keys_peer(a.iface.identity.public_key, a.address, ["10.0.0.1/32"])  # c knows a
    )
    applied = apply(
        a.iface,
        Change(
            peers=[
                PeerChange(
                    c.iface.identity.public_key,
                    endpoint=c.address,
                    allowed_ips=[IPEdit(net4("10.0.0.3/32"))],
                )
            ]
        ),
        net.now,
    )
    assert [p.public_key for p in applied.added] == [c.iface.identity.public_key]
    assert applied.removed == [] and applied.updated == [] and applied.actions == []
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.3", b"hello c"))
    assert c.delivered == [ipv4_packet("10.0.0.1", "10.0.0.3", b"hello c")]


def keys_peer(public_key, endpoint, ips):
    return PeerConfig(public_key, endpoint=endpoint, allowed_ips=[net4(n) for n in ips])


def test_removing_a_peer_stops_its_traffic_and_forgets_its_sessions():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert len(b.delivered) == 1
    key_b = b.iface.identity.public_key
    applied = apply(a.iface, Change(peers=[PeerChange(key_b, remove=True)]), net.now)
    assert [p.public_key for p in applied.removed] == [key_b] and a.iface.peers == {}
    assert a.iface.indices == {}
    assert a.iface.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), net.now) == []
    # Removing what is not there, or updating only, adds nothing.
    applied = apply(
        a.iface,
        Change(peers=[PeerChange(key_b, remove=True), PeerChange(K1, update_only=True)]),
        net.now,
    )
    assert applied.added == applied.removed == [] and a.iface.peers == {}


def test_allowed_ips_replace_then_edit_in_order_and_steal_from_another_peer():
    net, a, _b = pair()
    peer_b = next(iter(a.iface.peers.values()))
    other = a.iface.add_peer(keys_peer(K1, None, ["10.9.0.0/24"]))
    edits = ["10.5.0.0/24", "10.6.0.0/24", "10.9.0.0/24", "-10.5.0.0/24", "-10.6.0.0/24"]
    edits += ["10.6.0.0/24"]  # removed, then added again: the order counts
    change = PeerChange(
        peer_b.public_key,
        replace_allowed_ips=True,
        allowed_ips=[IPEdit(net4(e.lstrip("-")), e.startswith("-")) for e in edits],
    )
    applied = apply(a.iface, Change(peers=[change]), net.now)
    assert applied.updated == [peer_b]
    assert set(a.iface.routes.networks_of(peer_b)) == {net4("10.6.0.0/24"), net4("10.9.0.0/24")}
    assert a.iface.routes.networks_of(other) == []  # the network moved, as in wg
    # Removing a network another peer holds leaves it with that peer.
    removal = PeerChange(K1, allowed_ips=[IPEdit(net4("10.6.0.0/24"), True)])
    apply(a.iface, Change(peers=[removal]), net.now)
    assert set(a.iface.routes.networks_of(peer_b)) == {net4("10.6.0.0/24"), net4("10.9.0.0/24")}


def test_replace_peers_removes_all_then_adds_the_listed():
    net, a, _b = pair()
    old = next(iter(a.iface.peers.values()))
    applied = apply(
        a.iface,
        Change(replace_peers=True, peers=[PeerChange(old.public_key), PeerChange(K1)]),
        net.now,
    )
    assert applied.removed == [old]
    assert [p.public_key for p in applied.added] == [old.public_key, K1]
    assert a.iface.peers[old.public_key] is not old


def test_same_private_key_changes_nothing_a_new_one_drops_sessions():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    peer_b = next(iter(a.iface.peers.values()))
    assert peer_b.current is not None
    same = apply(a.iface, Change(private_key=a.iface.identity.private_key), net.now)
    assert same.actions == [] and peer_b.current is not None

    new_key = keys.generate_private_key()
    # A peer carrying our new public key is dropped: no one talks to itself.
    a.iface.add_peer(keys_peer(keys.public_key(new_key), None, []))
    applied = apply(a.iface, Change(private_key=new_key), net.now)
    assert a.iface.identity.public_key == keys.public_key(new_key)
    assert [p.public_key for p in applied.removed] == [keys.public_key(new_key)]
    assert applied.actions == [KeypairsCleared(peer_b)] and peer_b.keypairs() == []
    # b still has the old key for a: the new identity's handshake is not b's peer.
    net.now += REKEY_TIMEOUT  # one initiation per REKEY_TIMEOUT
    n = len(net.wire)
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert [d[0] for _, _, d in net.wire[n:]] == [1]  # an initiation, unanswered
    assert b.iface.drops["unknown_peer"] == 1


def test_without_a_private_key_no_handshake_is_made_or_answered():
    """wireguard-go's meaning of an all-zero (or empty) private_key: none at all, as
    pyvpn-wg starts. Sessions made before go, nothing handshakes until a key comes."""
    assert parse_set(["private_key="]).private_key == bytes(32)
    assert parse_set(["private_key=" + "0" * 64]).private_key == bytes(32)
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    peer_b = next(iter(a.iface.peers.values()))
    applied = apply(a.iface, Change(private_key=bytes(32)), net.now)
    assert applied.actions == [KeypairsCleared(peer_b)] and not a.iface.identity.present
    net.now += REKEY_TIMEOUT
    n = len(net.wire)
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert net.wire[n:] == []  # no initiation without a key
    # b's handshakes are keyed to a's old public key: refused at mac1. One whose mac1
    # is right for the keyless interface finds no key to answer with.
    net.now += REKEY_TIMEOUT
    forged = Forger(random.Random(1), a.iface.identity.public_key, None)
    net.inject(b.address, a, forged.initiation_valid_mac1())
    assert a.iface.drops["no_private_key"] == 1 and a.delivered == []
    # A key again: the next packet handshakes (b still knows a by the old key).
    apply(a.iface, Change(private_key=keys.generate_private_key()), net.now)
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert [d[0] for _, _, d in net.wire[n:]][-1] == 1


def test_setconf_with_a_new_key_leaves_no_action_for_a_replaced_peer():
    # wg setconf sends private_key and replace_peers together: the old peer objects'
    # KeypairsCleared must not reach a plane that no longer knows them.
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    old = next(iter(a.iface.peers.values()))
    change = Change(
        private_key=keys.generate_private_key(),
        replace_peers=True,
        peers=[PeerChange(old.public_key, persistent_keepalive=5, endpoint=b.address)],
    )
    applied = apply(a.iface, change, net.now)
    new = a.iface.peers[old.public_key]
    assert applied.removed == [old] and applied.added == [new]
    assert applied.actions and all(getattr(x, "peer", new) is new for x in applied.actions)


def test_psk_applies_from_the_next_handshake_and_keepalive_announces_when_turned_on():
    net, a, _b = pair()
    peer_b = next(iter(a.iface.peers.values()))
    applied = apply(
        a.iface,
        Change(peers=[PeerChange(peer_b.public_key, preshared_key=PSK, persistent_keepalive=9)]),
        net.now,
    )
    assert peer_b.preshared_key == PSK and peer_b.handshake.preshared_key == PSK
    assert peer_b.persistent_keepalive == 9
    (initiation,) = applied.actions  # no session yet: the keepalive handshakes first
    assert isinstance(initiation, Send) and initiation.data[0] == 1
    applied = apply(
        a.iface,
        Change(peers=[PeerChange(peer_b.public_key, preshared_key=bytes(32))]),
        net.now,
    )
    assert peer_b.preshared_key is None and applied.actions == []
    assert peer_b.timers.pending(Timer.PERSISTENT_KEEPALIVE)
    apply(a.iface, Change(peers=[PeerChange(peer_b.public_key, persistent_keepalive=0)]), net.now)
    assert not peer_b.timers.pending(Timer.PERSISTENT_KEEPALIVE)


def test_keepalive_turned_on_over_a_live_session_sends_a_keepalive():
    """With a session up, the announcement is a transport message (SendBatch on
    the Python plane), which the request carries out like any other."""
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2", b"session"))
    assert b.delivered
    peer_b = next(iter(a.iface.peers.values()))
    applied = apply(a.iface, Change(peers=[PeerChange(peer_b.public_key, persistent_keepalive=25)]),
                    net.now)  # fmt: skip
    (keepalive,) = applied.actions
    assert isinstance(keepalive, SendBatch) and keepalive.destination == b.address


def test_allowed_macs_travel_with_reload_and_bind_the_switch():
    config = parse(
        {
            "interface": {"private_key": keys.encode(K1), "mode": "tap"},
            "peer": [{"public_key": keys.encode(K2), "allowed_macs": ["02:00:00:00:00:0a"]}],
        }
    )
    mac = bytes.fromhex("02000000000a")
    assert config.peers[0].allowed_macs == [mac]
    text = sync_request(config, [])
    assert "\npyvpn_allowed_macs=02:00:00:00:00:0a\n" in text
    assert parse_set(text.splitlines()[1:]).peers[0].allowed_macs == [mac]
    net = SimNet()
    a, b = net.node("a", "198.18.0.1", l2=True), net.node("b", "198.18.0.2", l2=True)
    net.connect(a, b, [], [])
    peer = a.iface.peers[b.iface.identity.public_key]
    apply(a.iface, Change(peers=[PeerChange(peer.public_key, allowed_macs=[mac])]), 0.0)
    assert a.iface.macs.lookup(mac, now=1e9) is peer  # bound: found without learning, ever
    apply(a.iface, Change(peers=[PeerChange(peer.public_key, allowed_macs=[])]), 0.0)
    assert a.iface.macs.lookup(mac, now=0.0) is None
    for bad in ("02:00:00:00:00", "01:00:5e:00:00:01", "zz:00:00:00:00:01"):
        with pytest.raises(Refused):
            parse_set([f"public_key={K2.hex()}", f"pyvpn_allowed_macs={bad}"])
    _net, tun, _ = pair()
    with pytest.raises(Refused):
        check(tun.iface, Change(peers=[PeerChange(K2, allowed_macs=[mac])]))
    # One MAC address, one peer: in a request, and against the peers running.
    apply(a.iface, Change(peers=[PeerChange(peer.public_key, allowed_macs=[mac])]), 0.0)
    with pytest.raises(Refused) as refused:
        check(a.iface, Change(peers=[PeerChange(K2, allowed_macs=[mac])]))
    assert "bound to two peers" in str(refused.value)
    moved = [PeerChange(peer.public_key, allowed_macs=[]), PeerChange(K2, allowed_macs=[mac])]
    check(a.iface, Change(peers=moved))  # moved whole in one request: fine
    with pytest.raises(ConfigError, match="is also in peer"):
        parse(
            {
                "interface": {"private_key": keys.encode(K1), "mode": "tap"},
                "peer": [
                    {"public_key": keys.encode(k), "allowed_macs": ["02:00:00:00:00:0a"]}
                    for k in (K2, keys.public_key(keys.generate_private_key()))
                ],
            }
        )


def test_check_refuses_a_full_tunnels_mark_and_allowed_ips_in_tap_mode():
    net, a, _b = pair()
    check(a.iface, Change(listen_port=4000, fwmark=7))  # the socket's part is the shell's
    check(a.iface, Change(fwmark=0x51820), 0x51820, full_tunnel=True)
    with pytest.raises(Refused) as refused:
        check(a.iface, Change(fwmark=0), 0x51820, full_tunnel=True)
    assert refused.value.errno == errno.EBUSY
    tap = net.node("t", "198.18.0.9", l2=True)
    check(tap.iface, Change(peers=[PeerChange(K1, replace_allowed_ips=True)]))
    with pytest.raises(Refused) as refused:
        added = PeerChange(K1, allowed_ips=[IPEdit(net4("10.0.0.0/8"))])
        check(tap.iface, Change(peers=[added]))
    assert refused.value.errno == errno.EINVAL


def test_check_refuses_a_low_order_peer_key_whatever_else_the_request_holds():
    _net, a, b = pair()
    keep = b.iface.identity.public_key
    request = Change(peers=[PeerChange(keep, remove=True), PeerChange(bytes(32))])
    with pytest.raises(Refused) as refused:
        check(a.iface, request)
    assert refused.value.errno == errno.EINVAL and "low-order" in str(refused.value)
    check(a.iface, Change(peers=[PeerChange(bytes(32), remove=True)]))  # removing is fine


def test_check_refuses_a_full_tunnel_whose_fwmark_names_a_kernel_table():
    _net, a, _b = pair()
    default = PeerChange(K1, allowed_ips=[IPEdit(net4("0.0.0.0/0"))])
    check(a.iface, Change(peers=[default]), 0)  # a free table is picked
    check(a.iface, Change(fwmark=0x51820, peers=[default]), 254)
    check(a.iface, Change(fwmark=254), 0)  # no full tunnel: a mark is only a mark
    check(a.iface, Change(peers=[default]), 254, policy=False)  # table = N: a plain route
    for fwmark, change in [
        (254, Change(peers=[default])),
        (0, Change(fwmark=255, peers=[default])),
    ]:
        with pytest.raises(Refused) as refused:
            check(a.iface, change, fwmark)
        assert refused.value.errno == errno.EINVAL and "the kernel's" in str(refused.value)
