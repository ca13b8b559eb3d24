"""The native shell between C and the sans-IO core: what Python learns when an
upcall is lost, here the responder's confirmation, which a flood can crowd out
of the control socket, and what it does when C's counters reach the message
limits. The device is a socketpair; the peer is a sans-IO Interface whose
datagrams this test carries over real loopback UDP."""

import contextlib
import select
import time
from collections.abc import Iterator

import pytest

from tunnel.core import send
from tunnel.core.actions import KeypairInstalled, Send, Transmit
from tunnel.core.drops import Drop
from tunnel.host import clock
from tunnel.planes import dp
from tunnel.protocol.constants import (
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
    REKEY_TIMEOUT,
    TIMER_TICK,
)
from tunnel.protocol.messages import Initiation, parse
from tunnel.protocol.peer import Peer
from tunnel.protocol.timers import Timer

from ..conftest import NATIVE_MISSING, needs
from ..native_session import Session, answer, confirmed_session, peers, sends
from ..packets import ipv4_packet
from ..simnet import SimNet, peer_of
from ..waiting import wait_until

pytestmark = needs(NATIVE_MISSING)


@contextlib.contextmanager
def initiated_session() -> Iterator[Session]:
    """a initiated, b answered, and b took a's first packet on the new session."""
    with peers() as s:
        first = ipv4_packet("10.0.0.1", "10.0.0.2", b"first")
        s.shell.apply(s.a.iface.send_packet(first, clock.now()))
        answer_initiation(s)
        assert delivered_to_b(s) == [first]
        yield s


def test_a_confirmation_lost_with_its_upcall_is_read_from_the_plane() -> None:
    with confirmed_session() as s:
        (peer,) = s.a.iface.peers.values()
        assert peer.current is None and peer.next is not None
        # The upcall is lost, as to a full control socket, with the transport events
        # before it. (C writes the packet to the device before it promotes the
        # keypair and says so: wait for it.)
        lost = lost_upcalls_until(s, dp.UpcallKind.KEYPAIR_CONFIRMED)
        assert lost.kind is dp.UpcallKind.KEYPAIR_CONFIRMED
        s.shell.refresh()
        assert peer.current is not None and peer.next is None
        assert (
            peer.current.local_index == s.shell.plane.stats(s.shell.ids[peer]).current_local_index
        )
        assert peer.last_handshake_wall is not None


def test_a_packet_c_has_no_key_for_starts_a_handshake() -> None:
    """C refuses to send on the keypair Python holds for current (ENOKEY: gone, too
    old or worn out in C's eyes): the packet waits and a handshake starts, as
    send.c does for a packet without a usable keypair, and goes on the new session
    in place of the keepalive that would confirm it."""
    with confirmed_session() as s:
        refreshed_after_confirmation(s)
        (peer,) = s.a.iface.peers.values()
        assert peer.current is not None
        s.shell.plane.clear_keypair(s.shell.ids[peer], dp.SLOT_CURRENT)
        # The response a sent is as old as REKEY_TIMEOUT: it no longer holds back
        # a's own initiation (send.c's last_sent_handshake).
        peer.last_handshake_sent -= REKEY_TIMEOUT
        packet = ipv4_packet("10.0.0.1", "10.0.0.2", b"waits for a handshake")
        s.shell.apply(s.a.iface.send_packet(packet, clock.now()))
        assert s.shell.plane.stats(s.shell.ids[peer]).staged_packets == 1  # C holds it
        answer_initiation(s)
        assert delivered_to_b(s) == [packet]


def test_c_and_python_keep_time_on_one_clock() -> None:
    """C's timestamps are taken as the core's times (refresh), so both must come
    from CLOCK_BOOTTIME, which goes on counting while the host is suspended."""
    with confirmed_session() as s:
        (peer,) = s.a.iface.peers.values()
        received = s.shell.plane.stats(s.shell.ids[peer]).last_rx_ns / 1e9
        assert 0 <= clock.now() - received < 2
        assert abs(clock.now() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 0.1


def test_the_slots_are_cs_even_when_an_initiation_overtakes_its_confirmation() -> None:
    """In one receive batch, b's first message on a's `next` (C promotes it) and a
    new initiation from b: C hands the initiation up before it says it confirmed.
    The core, answering, expects `next` (C's new current) to be retired; C kept
    it. What the core sees and decides by is C's."""
    with confirmed_session(confirm=False) as s:
        (peer,) = s.a.iface.peers.values()
        first = peer.next
        s.shell.plane.stop()  # so that one recvmmsg takes both
        s.udp_b.sendto(s.confirmation, s.a.address)
        s.net.now += 10  # past REKEY_TIMEOUT: b may initiate again
        (initiation,) = sends(send.initiate(s.b.iface.state, peer_of(s.b), s.net.now, retry=False))
        s.udp_b.sendto(initiation.data, s.a.address)
        s.shell.plane.start(1)
        assert select.select([s.shell.ctrl], [], [], 2)[0]
        time.sleep(0.2)  # both upcalls written
        s.shell._upcalls()  # the initiation, answered; then the confirmation
        stats = s.shell.plane.stats(s.shell.ids[peer])
        assert stats.has_current and stats.has_next
        assert stats.current_local_index == first.local_index
        assert peer.current is first  # the core's view is C's
        assert peer.next is not None and peer.next.local_index == stats.next_local_index
        assert peer.current.send_counter == stats.current_send_counter
        held = (stats.current_local_index, stats.next_local_index)
        assert all(i in s.a.iface.indices for i in held)
        assert peer.last_handshake_wall is not None


def slots(peer: Peer) -> tuple[int | None, ...]:
    """The core's view of the peer's slots (current, previous, next), by local index."""
    return tuple(k and k.local_index for k in (peer.current, peer.previous, peer.next))


def slots_in_c(s: Session, peer: Peer) -> tuple[int | None, ...]:
    return tuple(s.shell.plane.slots(s.shell.ids[peer])[:3])


def test_only_c_shuffles_the_slots_and_the_core_learns_them_from_it() -> None:
    """A new keypair is a command to C, which runs add_new_keypair(): the core's
    slots do not move when it makes the keypair, as responder or as initiator,
    only when the shell has C's answer. The initiator then sends its
    confirmation through C, on the keypair C made current."""
    with peers() as s:
        peer = peer_of(s.a)
        (initiation,) = sends(s.b.iface.send_packet(ipv4_packet("10.0.0.2", "10.0.0.1"), s.net.now))
        answered = answer(s, initiation.data)
        assert slots(peer) == (None, None, None)
        s.shell.apply(answered)
        first = peer.next.local_index
        assert slots(peer) == slots_in_c(s, peer) == (None, None, first)
        # b's first message, never handed to a: a's session stays unconfirmed.
        assert sends(s.b.iface.receive_datagram(s.udp_b.recv(2048), s.a.address, s.net.now))

        as_if_initiated_long_ago(s)
        (initiation,) = sends(send.initiate(s.a.iface.state, peer, clock.now(), retry=False))
        s.shell.apply([initiation])
        (response,) = sends(s.b.iface.receive_datagram(s.udp_b.recv(2048), s.a.address, s.net.now))
        completed = s.a.iface.receive_datagram(response.data, s.b.address, clock.now())
        assert slots(peer) == slots_in_c(s, peer) == (None, None, first)
        assert [type(a) for a in completed] == [KeypairInstalled, Transmit]
        assert completed[1].packet == b""
        s.shell.apply(completed)
        made = completed[0].keypair.local_index
        assert slots(peer) == slots_in_c(s, peer) == (made, first, None)
        assert delivered_to_b(s) == []  # the confirmation: a keepalive on the new session
        assert peer_of(s.b).current.keys.local_index == peer.current.keys.remote_index
        assert peer.handshakes.completed == 1 and peer.handshakes.rekeys == 1


def test_session_keys_live_in_c_alone() -> None:
    """The core's copy of a keypair's keys is overwritten once C holds them."""
    with confirmed_session() as s:
        refreshed_after_confirmation(s)
        (peer,) = s.a.iface.peers.values()
        assert peer.current.keys.send_key == bytes(32)
        assert peer.current.keys.receive_key == bytes(32)
        # C carries traffic on them all the same.
        s.shell.apply(s.a.iface.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"c"), clock.now()))
        (delivered,) = [a for a in s.b.iface.receive_datagram(s.udp_b.recv(2048), s.a.address,
                        s.net.now) if hasattr(a, "packets")]  # fmt: skip
        assert delivered.packets[-1].endswith(b"c")


def lost_upcalls_until(s: Session, kind: dp.UpcallKind) -> dp.Upcall:
    """Read and drop a's upcalls, as a full control socket would, up to one of `kind`."""
    while True:
        assert select.select([s.shell.ctrl], [], [], 2)[0]
        lost = dp.parse_upcall(s.shell.ctrl.recv(2048))
        if lost.kind is kind:
            return lost


def refreshed_after_confirmation(s: Session) -> None:
    """C writes b's first packet into the device before it promotes the keypair
    and says so (after the transport events of the same batch): wait for its word,
    then let the core learn it."""
    (peer,) = s.a.iface.peers.values()
    while not peer.handshakes.completed:
        assert select.select([s.shell.ctrl], [], [], 2)[0]
        s.shell._upcalls()


def answer_initiation(s: Session) -> None:
    """b answers a's initiation; a, handed the response by C, takes the session."""
    initiation = s.udp_b.recv(2048)
    assert parse(initiation).__class__ is Initiation
    (response,) = sends(s.b.iface.receive_datagram(initiation, s.a.address, s.net.now))
    s.udp_b.sendto(response.data, s.a.address)
    assert select.select([s.shell.ctrl], [], [], 2)[0]
    s.shell._upcalls()


def delivered_to_b(s: Session) -> list[bytes]:
    """The packets in the next transport message from a, as b delivers them."""
    actions = s.b.iface.receive_datagram(s.udp_b.recv(2048), s.a.address, s.net.now)
    return [p for a in actions if hasattr(a, "packets") for p in a.packets]


def as_if_initiated_long_ago(s: Session) -> None:
    """One handshake message per REKEY_TIMEOUT: let a start the next at once (and b,
    on its own clock, take it)."""
    peer = peer_of(s.a)
    peer.last_initiation_sent -= REKEY_TIMEOUT
    peer.last_handshake_sent -= REKEY_TIMEOUT
    s.a.iface.wall_offset += REKEY_TIMEOUT  # its TAI64N stamps, which b checks
    s.net.now += REKEY_TIMEOUT


@pytest.mark.parametrize("a_initiated", [True, False], ids=["initiator", "responder"])
def test_c_counting_past_rekey_after_messages_starts_a_handshake(a_initiated: bool) -> None:
    """C counts the messages; once its session has sent more than
    REKEY_AFTER_MESSAGES, a handshakes anew, initiator or responder alike
    (timers.c keep_key_fresh), and the new session carries the traffic."""
    with initiated_session() if a_initiated else confirmed_session() as s:
        if not a_initiated:
            refreshed_after_confirmation(s)
        peer = peer_of(s.a)
        first = peer.current
        as_if_initiated_long_ago(s)
        s.shell.plane.set_send_counter(s.shell.ids[peer], REKEY_AFTER_MESSAGES - 1)
        for text in (b"the 2^60th", b"one more"):
            s.from_device(ipv4_packet("10.0.0.1", "10.0.0.2", text))
            assert delivered_to_b(s)[-1].endswith(text)
            s.shell.refresh()
        answer_initiation(s)  # only after the second: an initiation waits here
        assert delivered_to_b(s) == []  # a's keepalive, on the new session
        assert peer.current is not first and peer.handshakes.rekeys == 1
        s.from_device(ipv4_packet("10.0.0.1", "10.0.0.2", b"new keys"))
        assert delivered_to_b(s)[-1].endswith(b"new keys")
        assert peer_of(s.b).current.keys.local_index == peer.current.keys.remote_index


def test_a_packet_past_reject_after_messages_waits_for_a_new_session() -> None:
    """C sends nothing on a keypair past REJECT_AFTER_MESSAGES: the packet goes up,
    waits in the core while a handshakes, and goes on the new session."""
    with initiated_session() as s:
        peer = peer_of(s.a)
        as_if_initiated_long_ago(s)
        s.shell.plane.set_send_counter(s.shell.ids[peer], REJECT_AFTER_MESSAGES - 1)
        last, waits = (ipv4_packet("10.0.0.1", "10.0.0.2", t) for t in (b"last", b"waits"))
        s.from_device(last)
        assert delivered_to_b(s)[-1] == last
        s.from_device(waits)
        assert select.select([s.shell.ctrl], [], [], 2)[0]
        s.shell._upcalls()  # NEED_KEY: staged, and an initiation
        answer_initiation(s)
        assert delivered_to_b(s)[-1] == waits
        assert peer.handshakes.rekeys == 1 and peer.drops.staged_overflow == 0


def test_c_counts_its_drops_under_the_cores_reasons() -> None:
    """What C drops for the interface lands in the core's counter under the Drop
    the Python plane counts it as, so `show --json` has one key per reason."""
    with peers() as s:
        s.udp_b.sendto(bytes([4, 0, 0, 0]) + bytes(28), s.a.address)  # an index no one holds
        s.from_device(ipv4_packet("10.0.0.1", "10.9.9.9"))  # in no peer's allowed IPs
        stats = s.shell.plane.interface_stats
        wait_until(lambda: stats().rx_unknown_index and stats().tx_no_route, "drops", 2, 0.01)
        s.shell.refresh()
        assert s.a.iface.drops == {Drop.UNKNOWN_INDEX: 1, Drop.NO_ROUTE: 1}
        assert all(type(reason) is Drop for reason in s.a.iface.drops)
        python = SimNet().node("python", "127.0.0.1")
        python.iface.receive_datagram(bytes([4, 0, 0, 0]) + bytes(28), s.b.address, s.net.now)
        assert [(r, type(r)) for r in python.iface.drops] == [(Drop.UNKNOWN_INDEX, Drop)]


def test_a_key_wanted_while_the_hold_lasts_is_handshaked_for_once_it_ends() -> None:
    """a has just answered b's initiation (its session waits for b's confirmation,
    which never comes) when a packet for b arrives: C stages it and says once that
    b needs a key, and a's own initiation waits for the hold (REKEY_TIMEOUT after
    its response). Once the hold is over a handshakes without another packet, and
    the packet goes on the new session."""
    with confirmed_session(confirm=False) as s:
        peer = peer_of(s.a)
        packet = ipv4_packet("10.0.0.1", "10.0.0.2", b"waits out the hold")
        s.from_device(packet)
        assert select.select([s.shell.ctrl], [], [], 2)[0]
        s.shell._upcalls()  # NEED_KEY, the initiation held back
        assert peer.handshakes.initiations_sent == 0
        s.shell.apply(s.a.iface.tick(peer.last_handshake_sent + REKEY_TIMEOUT / 2))
        assert peer.handshakes.initiations_sent == 0
        s.shell.apply(s.a.iface.tick(peer.last_handshake_sent + REKEY_TIMEOUT))
        assert peer.handshakes.initiations_sent == 1
        answer_initiation(s)
        assert delivered_to_b(s) == [packet]


def test_a_retransmission_a_crossed_answer_holds_back_is_made_up_for_when_the_hold_ends() -> None:
    """a's initiation is lost; b's own arrives a second later and a answers it (its
    session waits for b's confirmation, which never comes). A packet for b: C
    stages it and says once that b needs a key. a's retransmission falls due
    within the hold its response began, so it is held back and dropped, as
    timers.c drops it; once the hold is over a handshakes all the same, and the
    packet goes on the new session."""
    with peers() as s:
        peer = peer_of(s.a)
        s.shell.apply(s.a.iface.start(clock.now() - 1))
        assert parse(s.udp_b.recv(2048)).__class__ is Initiation  # lost
        packet = ipv4_packet("10.0.0.2", "10.0.0.1")
        (initiation,) = sends(s.b.iface.send_packet(packet, s.net.now))
        s.shell.apply(answer(s, initiation.data))
        s.udp_b.recv(2048)  # a's response, lost too
        waits = ipv4_packet("10.0.0.1", "10.0.0.2", b"waits out the hold")
        s.from_device(waits)
        assert select.select([s.shell.ctrl], [], [], 2)[0]
        s.shell._upcalls()  # NEED_KEY, the initiation held back
        retransmission = peer.timers.deadlines[Timer.RETRANSMIT_HANDSHAKE]
        hold_over = peer.last_handshake_sent + REKEY_TIMEOUT
        assert retransmission < hold_over
        s.shell.apply(s.a.iface.tick(retransmission))
        assert peer.handshakes.initiations_sent == 1
        s.shell.apply(s.a.iface.tick(hold_over))
        assert peer.handshakes.initiations_sent == 2
        answer_initiation(s)
        assert delivered_to_b(s) == [waits]


def test_the_initiators_first_message_finds_the_keypair_the_response_announced() -> None:
    """b may answer a's response before a's Python takes its next action: once the
    response has gone, C holds the keypair it announced (send.c begins the
    session before sending it), so b's first message is taken, not dropped as
    an unknown index."""
    with peers() as s:
        packet = ipv4_packet("10.0.0.2", "10.0.0.1")
        (initiation,) = sends(s.b.iface.send_packet(packet, s.net.now))
        actions = answer(s, initiation.data)
        sent = next(i for i, action in enumerate(actions) if isinstance(action, Send))
        s.shell.apply(actions[: sent + 1])
        response = s.udp_b.recv(2048)
        (transport,) = sends(s.b.iface.receive_datagram(response, s.a.address, s.net.now))
        s.udp_b.sendto(transport.data, s.a.address)
        assert s.dev.recv(2048).endswith(packet)
        s.shell.apply(actions[sent + 1 :])
        assert s.shell.plane.interface_stats().rx_unknown_index == 0


def test_giving_up_the_handshake_drops_what_c_staged_and_the_next_packet_asks_again() -> None:
    """timers.c gives up after MAX_TIMER_HANDSHAKES retries and purges the staged
    packets: C's go too, and a packet after it asks for a key again."""
    with peers() as s:
        peer = peer_of(s.a)
        s.from_device(ipv4_packet("10.0.0.1", "10.0.0.2", b"never answered"))
        assert select.select([s.shell.ctrl], [], [], 2)[0]
        s.shell._upcalls()  # NEED_KEY: an initiation
        assert peer.handshakes.initiations_sent == 1
        assert s.shell.plane.stats(s.shell.ids[peer]).staged_packets == 1
        peer.timers.handshake_attempts = MAX_TIMER_HANDSHAKES + 1
        s.shell.apply(s.a.iface.tick(peer.timers.deadlines[Timer.RETRANSMIT_HANDSHAKE]))
        assert s.shell.plane.stats(s.shell.ids[peer]).staged_packets == 0
        s.from_device(ipv4_packet("10.0.0.1", "10.0.0.2", b"new data"))
        assert select.select([s.shell.ctrl], [], [], 2)[0]
        assert dp.parse_upcall(s.shell.ctrl.recv(2048)).kind is dp.UpcallKind.NEED_KEY


def test_packets_staged_while_the_responder_waits_go_when_the_initiator_confirms() -> None:
    """a answered b's initiation; a packet for b waits in C until b's first message
    confirms the session, and C sends it then, without waiting for Python."""
    with confirmed_session(confirm=False) as s:
        packet = ipv4_packet("10.0.0.1", "10.0.0.2", b"after the confirmation")
        s.from_device(packet)
        assert select.select([s.shell.ctrl], [], [], 2)[0]
        s.shell._upcalls()  # NEED_KEY, the initiation held back
        s.udp_b.sendto(s.confirmation, s.a.address)
        assert delivered_to_b(s) == [packet]


def b_sends_data(s: Session, text: bytes) -> None:
    """A data message from b, which C writes into a's device."""
    packet = ipv4_packet("10.0.0.2", "10.0.0.1", text)
    for send_ in sends(s.b.iface.send_packet(packet, s.net.now)):
        s.udp_b.sendto(send_.data, s.a.address)
    assert s.dev.recv(2048).endswith(packet)


def test_c_tells_the_timers_what_it_received_without_waiting_for_a_tick() -> None:
    """b's first message armed a's keepalive (timers.c wg_timers_data_received);
    a second data message, heard as an event from C, notes that another keepalive
    is due, with no tick between."""
    with confirmed_session() as s:
        refreshed_after_confirmation(s)
        peer = peer_of(s.a)
        assert peer.timers.pending(Timer.SEND_KEEPALIVE)
        assert not peer.timers.need_another_keepalive
        time.sleep(TIMER_TICK)  # C rings for a peer at most once a tick
        b_sends_data(s, b"second")
        assert select.select([s.shell.ctrl], [], [], 2)[0]
        s.shell._upcalls()
        assert peer.timers.need_another_keepalive


def test_transport_events_lost_with_their_upcall_reach_the_timers_at_the_tick() -> None:
    with confirmed_session() as s:
        refreshed_after_confirmation(s)
        peer = peer_of(s.a)
        time.sleep(TIMER_TICK)
        b_sends_data(s, b"second")
        lost_upcalls_until(s, dp.UpcallKind.EVENTS)
        assert not peer.timers.need_another_keepalive
        s.shell.refresh()
        assert peer.timers.need_another_keepalive
