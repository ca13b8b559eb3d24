"""Property tests (hypothesis): hostile bytes never break the parser or the
interface, and the replay window accepts each counter at most once."""

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.protocol import keys
from tunnel.protocol.constants import COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES
from tunnel.protocol.cookie import CookieGenerator
from tunnel.protocol.messages import CookieReply, Initiation, MessageError, Response, parse
from tunnel.protocol.replay import ReplayWindow

from ..packets import ipv4_packet
from ..simnet import SimNet

message_like = st.one_of(
    st.binary(max_size=300),
    st.tuples(
        st.sampled_from([1, 2, 3, 4]), st.sampled_from([0, 1, 2]), st.binary(max_size=200)
    ).map(lambda t: bytes([t[0], t[1], 0, 0]) + t[2]),
    st.sampled_from([148, 92, 64, 32, 48])
    .flatmap(
        lambda n: st.tuples(
            st.sampled_from([1, 2, 3, 4]), st.binary(min_size=n - 4, max_size=n - 4)
        )
    )
    .map(lambda t: bytes([t[0], 0, 0, 0]) + t[1]),
)


@given(message_like)
def test_parser_raises_only_message_error(data):
    try:
        message = parse(data)
    except MessageError:
        return
    assert message.pack() == data  # what parses, packs back to the same bytes


@settings(max_examples=300)
@given(st.lists(message_like, max_size=20))
def test_interface_survives_garbage_without_state_change(datagrams):
    net = SimNet()
    a = net.node("a", "198.18.0.1")
    b = net.node("b", "198.18.0.2")
    net.connect(a, b, ["10.0.0.1/32"], ["10.0.0.2/32"])
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    peer = next(iter(b.iface.peers.values()))
    before = (dict(b.iface.indices), peer.endpoint, peer.current, peer.rx_bytes)
    for data in datagrams:
        assert b.iface.receive_datagram(data, ("203.0.113.9", 9), net.now) == []
    assert (dict(b.iface.indices), peer.endpoint, peer.current, peer.rx_bytes) == before
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2", b"still works"))
    assert b.delivered[-1].endswith(b"still works")


@given(st.lists(st.integers(min_value=0, max_value=3 * COUNTER_WINDOW_SIZE), max_size=200))
def test_replay_window_accepts_each_counter_once_within_window(counters):
    window = ReplayWindow()
    accepted: set[int] = set()
    greatest = -1
    for counter in counters:
        ok = window.accept(counter)
        expected = counter not in accepted and counter > greatest - COUNTER_WINDOW_SIZE
        assert ok == expected, (counter, greatest)
        if ok:
            accepted.add(counter)
            greatest = max(greatest, counter)


@given(st.permutations(range(64)))
def test_replay_window_in_window_reordering_accepted_once(order):
    window = ReplayWindow()
    assert all(window.accept(c) for c in order)
    assert not any(window.accept(c) for c in order)


def test_replay_window_edges():
    window = ReplayWindow()
    assert window.accept(COUNTER_WINDOW_SIZE + 10)
    assert window.accept(11)  # exactly at the trailing edge of the window
    assert not window.accept(10)  # one past it: too old
    assert not window.accept(REJECT_AFTER_MESSAGES)
    assert window.size >= 8128  # at least the Linux kernel's window


def test_replay_window_takes_any_jump_at_once():
    """A jump costs what a small step costs: no bitmap as wide as the jump (a
    counter of 2^63 once raised MemoryError out of receive_datagram)."""
    window = ReplayWindow()
    assert window.accept(5)
    assert window.accept(2**63)
    assert not window.accept(2**63) and not window.accept(5)
    assert window.accept(2**63 - 1)


# X25519 points of small order, as encoded and with the ignored top bit set.
LOW_ORDER = sorted(keys.LOW_ORDER_POINTS) + [
    p[:31] + bytes([p[31] | 0x80]) for p in sorted(keys.LOW_ORDER_POINTS)
]


def test_low_order_keys_are_those_x25519_refuses():
    private = X25519PrivateKey.generate()
    for point in LOW_ORDER:
        assert keys.low_order(point)
        try:
            private.exchange(X25519PublicKey.from_public_bytes(point))
        except ValueError:
            continue
        raise AssertionError(f"{point.hex()} gives a secret")
    for _ in range(100):
        assert not keys.low_order(keys.public_key(keys.generate_private_key()))


points = st.one_of(st.sampled_from(LOW_ORDER), st.binary(min_size=32, max_size=32))


def handshake_pair():
    net = SimNet()
    a = net.node("a", "198.18.0.1")
    b = net.node("b", "198.18.0.2")
    net.connect(a, b, ["10.0.0.1/32"], ["10.0.0.2/32"])
    del net.nodes[b.address]  # a's initiation stays in flight, unanswered
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    return net, a, b


@settings(max_examples=200)
@given(
    kind=st.sampled_from(["initiation", "response", "cookie"]),
    ephemeral=points,
    sealed=st.binary(min_size=64, max_size=64),
    sender=st.integers(0, 2**32 - 1),
    matching_receiver=st.booleans(),
)
def test_handshake_messages_with_hostile_points_raise_nothing(
    kind, ephemeral, sealed, sender, matching_receiver
):
    """Every handshake message, its MACs right, with low-order or random points
    and random fields: the core drops it and counts why; no exception escapes."""
    net, a, b = handshake_pair()
    peer_b = next(iter(a.iface.peers.values()))
    receiver = peer_b.handshake.local_index if matching_receiver else sender
    if kind == "initiation":
        target = b
        msg = Initiation(sender, ephemeral, sealed[:48], sealed[48:] + sealed[:12], b"", b"")
    elif kind == "response":
        target = a
        msg = Response(sender, receiver, ephemeral, sealed[:16], b"", b"")
    else:
        target = a
        msg = CookieReply(receiver, sealed[:24], sealed[24:56])
    data = msg.pack()
    if kind != "cookie":
        # mac1 right for the target, so that the message gets past the DoS check
        data = CookieGenerator(target.iface.identity.public_key).add_macs(data + bytes(32), 0)
    before = dropped(target)
    assert target.iface.receive_datagram(data, ("203.0.113.9", 9), net.now) == []
    assert dropped(target) == before + 1


def dropped(node) -> int:
    """Everything the node's core counted as dropped, interface-wide and per peer."""
    per_peer = sum(sum(vars(p.drops).values()) for p in node.iface.peers.values())
    return sum(node.iface.drops.values()) + per_peer
