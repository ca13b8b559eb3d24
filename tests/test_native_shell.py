"""The native shell between C and the sans-IO core: what Python learns when an
upcall is lost, here the responder's confirmation, which a flood can crowd out
of the control socket. The device is a socketpair; the initiator is a sans-IO
Interface whose datagrams this test carries over real loopback UDP."""

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tunnel.core.actions import Send, SendBatch
from tunnel.host import clock
from tunnel.planes import dp
from tunnel.planes.native import NativeShell
from tunnel.protocol.messages import Initiation, parse

from .simnet import Node, SimNet, ipv4_packet, unbatched

pytestmark = pytest.mark.skipif(not dp.available(), reason="tunnel.planes._native not built")


def sends(actions: list) -> list[Send]:
    """Every datagram the actions send, one Send each."""
    return [
        u
        for a in actions
        for u in (unbatched(a) if isinstance(a, SendBatch) else [a])
        if isinstance(u, Send)
    ]


@dataclass
class Session:
    """a behind a NativeShell, b a sans-IO Interface, b's initiation answered and
    its first transport message written into a's device (C confirmed it)."""

    net: SimNet
    a: Node
    b: Node
    shell: NativeShell
    udp_b: socket.socket
    dev: socket.socket  # a's device, the test's end
    confirmation: bytes  # b's first transport message, sent only if confirm


@contextlib.contextmanager
def confirmed_session(confirm: bool = True) -> Iterator[Session]:
    net = SimNet()
    udp_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_a.bind(("127.0.0.1", 0))
    udp_b.bind(("127.0.0.1", 0))
    udp_b.settimeout(2)
    a = net.node("a", "127.0.0.1", external_transport=True)  # as the daemon makes it
    b = net.node("b", "127.0.0.1")
    a.address, b.address = udp_a.getsockname(), udp_b.getsockname()
    net.connect(a, b, ["10.0.0.1/32"], ["10.0.0.2/32"])
    dev, dev_plane = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev.settimeout(2)
    shell = NativeShell(a.iface, dev_plane.fileno(), udp_a)
    shell.plane.start(1)
    try:
        # b initiates; a answers as the responder, its new keypair NEXT in C.
        (initiation,) = sends(b.iface.send_packet(ipv4_packet("10.0.0.2", "10.0.0.1"), net.now))
        shell.apply(a.iface.receive_datagram(initiation.data, b.address, clock.now()))
        response = udp_b.recv(2048)
        # b's first transport message confirms it: C makes NEXT CURRENT and says so.
        (transport,) = sends(b.iface.receive_datagram(response, a.address, net.now))
        if confirm:
            udp_b.sendto(transport.data, a.address)
            assert dev.recv(2048).endswith(ipv4_packet("10.0.0.2", "10.0.0.1"))
        yield Session(net, a, b, shell, udp_b, dev, transport.data)
    finally:
        shell.stop()
        for s in (udp_a, udp_b, dev):
            s.close()


def test_a_confirmation_lost_with_its_upcall_is_read_from_the_plane() -> None:
    with confirmed_session() as s:
        (peer,) = s.a.iface.peers.values()
        assert peer.current is None and peer.next is not None
        # The upcall is lost, as to a full control socket. (C writes the packet to
        # the device before it promotes the keypair and says so: wait for it.)
        assert select.select([s.shell.ctrl], [], [], 2)[0]
        lost = dp.parse_upcall(s.shell.ctrl.recv(2048))
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
    send.c does for a packet without a usable keypair."""
    with confirmed_session() as s:
        refreshed_after_confirmation(s)
        (peer,) = s.a.iface.peers.values()
        assert peer.current is not None
        s.shell.plane.clear_keypair(s.shell.ids[peer], dp.SLOT_CURRENT)
        packet = ipv4_packet("10.0.0.1", "10.0.0.2", b"waits for a handshake")
        s.shell.apply(s.a.iface.send_packet(packet, clock.now()))
        assert parse(s.udp_b.recv(2048)).__class__ is Initiation
        assert list(peer.staged) == [packet]


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
        (initiation,) = sends(s.b.iface._initiate(peer_of(s.b), s.net.now, retry=False))
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


def refreshed_after_confirmation(s: Session) -> None:
    """C writes b's first packet into the device before it promotes the keypair
    and says so: wait for its word, then let the core learn it."""
    assert select.select([s.shell.ctrl], [], [], 2)[0]
    s.shell._upcalls()


def peer_of(node: Node):
    (peer,) = node.iface.peers.values()
    return peer
