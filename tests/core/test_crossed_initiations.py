"""Both ends initiating at the same instant, each with traffic waiting and more
arriving (a tap segment's chatter, a DHCP client retrying): the initiations
cross on the wire. Each end answers the other's while its own stays in flight,
so the answers complete a session within a round trip; the kernel's hold after
any handshake message sent keeps either end from starting another meanwhile."""

import ipaddress

import pytest

from tunnel.protocol.constants import REKEY_TIMEOUT
from tunnel.protocol.peer_config import PeerConfig

from ..packets import ipv4_packet
from ..simnet import TimedNet, TimedNode

SEEDS = range(100)


def crossed_pair(seed: int, offset: float, phase: float, l2: bool, keepalive: int):
    net = TimedNet(seed)
    a = net.node("a", "192.0.2.1", l2=l2)
    b = net.node("b", "192.0.2.2", offset=offset, phase=phase, l2=l2)
    for node, other, inner in ((a, b, "10.0.0.2/32"), (b, a, "10.0.0.1/32")):
        node.iface.add_peer(
            PeerConfig(
                other.iface.identity.public_key,
                endpoint=other.address,
                allowed_ips=[] if l2 else [ipaddress.ip_network(inner)],
                persistent_keepalive=keepalive,
            )
        )
    for node, own, other in ((a, "1", "2"), (b, "2", "1")):
        if l2:  # broadcast chatter, as a LAN's ARP, DHCP and router advertisements
            packet = b"\xff" * 6 + bytes.fromhex(f"02000000000{own}") + b"\x08\x06" + bytes(28)
        else:
            packet = ipv4_packet(f"10.0.0.{own}", f"10.0.0.{other}")
        net.feed(node, packet, every=0.05)
        net.start(node)  # the same instant: both greetings cross
    return net, a, b


def in_session(a: TimedNode, b: TimedNode) -> bool:
    return bool(a.delivered) and bool(b.delivered)


@pytest.mark.parametrize("l2", [False, True], ids=["tun", "tap"])
@pytest.mark.parametrize(
    ("offset", "phase"),
    [(0.0, 0.0), (123.456, 0.0371)],
    ids=["same-clock", "different-clocks"],
)
def test_crossed_initiations_make_a_session_within_two_rekey_timeouts(offset, phase, l2):
    late = []
    for seed in SEEDS:
        net, a, b = crossed_pair(seed, offset, phase, l2, keepalive=5)
        if not net.run_until(net.now + 2 * REKEY_TIMEOUT, lambda a=a, b=b: in_session(a, b)):
            late.append((seed, dict(a.iface.drops), dict(b.iface.drops)))
    assert not late, f"no session within {2 * REKEY_TIMEOUT:g} s: {late}"


def test_crossed_initiations_complete_without_a_dropped_response():
    """The answers to both crossed initiations are taken: neither end drops a
    response as unknown, and each holds a session it may send on at once."""
    net, a, b = crossed_pair(7, 0.0, 0.0, False, keepalive=0)
    peers = [next(iter(node.iface.peers.values())) for node in (a, b)]
    assert net.run_until(net.now + 0.01, lambda: all(p.current for p in peers))
    for node, peer in zip((a, b), peers, strict=True):
        assert node.iface.drops["unknown_index"] == 0
        assert peer.current is not None and peer.current.keys.is_initiator
        assert peer.handshakes.initiations_sent == 1
    # The answer's state kept the replay guard: b's initiation again is refused.
    initiation = next(d for src, _, d in net.wire if src == b.address and d[0] == 1)
    assert a.iface.receive_datagram(initiation, b.address, net.now + 1) == []
    assert a.iface.drops["replayed_initiation"] == 1


def test_an_answered_initiation_holds_back_our_own_for_rekey_timeout():
    """send.c's last_sent_handshake: a response sent counts as a handshake sent,
    so packets waiting on the answering end start no second handshake while the
    initiator completes the first."""
    net = TimedNet(3)
    a, b = net.node("a", "192.0.2.1"), net.node("b", "192.0.2.2")
    routes = [ipaddress.ip_network("10.0.0.0/24")]
    a.iface.add_peer(
        PeerConfig(b.iface.identity.public_key, endpoint=b.address, allowed_ips=routes)
    )
    b.iface.add_peer(
        PeerConfig(a.iface.identity.public_key, endpoint=a.address, allowed_ips=routes)
    )
    (peer_a,) = a.iface.peers.values()
    now = net.now
    (initiation,) = b.iface.start(now)
    answer = a.iface.receive_datagram(initiation.data, b.address, now)
    assert [type(x).__name__ for x in answer] == ["KeypairInstalled", "Send"]
    packet = ipv4_packet("10.0.0.1", "10.0.0.2")
    assert a.iface.send_packet(packet, now + REKEY_TIMEOUT - 0.01) == []
    assert peer_a.handshakes.initiations_sent == 0
    (later,) = a.iface.send_packet(packet, now + REKEY_TIMEOUT)
    assert later.data[0] == 1 and peer_a.handshakes.initiations_sent == 1  # an initiation
