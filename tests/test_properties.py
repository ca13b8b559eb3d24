"""Property tests (hypothesis): hostile bytes never break the parser or the
interface, and the replay window accepts each counter at most once."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.protocol.constants import COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES
from tunnel.protocol.messages import MessageError, parse
from tunnel.protocol.replay import ReplayWindow

from .simnet import SimNet, ipv4_packet

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
