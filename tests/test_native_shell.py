"""The native shell between C and the sans-IO core: what Python learns when an
upcall is lost, here the responder's confirmation, which a flood can crowd out
of the control socket. The device is a socketpair; the initiator is a sans-IO
Interface whose datagrams this test carries over real loopback UDP."""

import select
import socket
import time

import pytest

from tunnel.core.actions import Send
from tunnel.planes import dp
from tunnel.planes.native import NativeShell

from .simnet import SimNet, ipv4_packet

pytestmark = pytest.mark.skipif(not dp.available(), reason="tunnel.planes._native not built")


def sends(actions: list) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def test_a_confirmation_lost_with_its_upcall_is_read_from_the_plane() -> None:
    net = SimNet()
    udp_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_a.bind(("127.0.0.1", 0))
    udp_b.bind(("127.0.0.1", 0))
    udp_b.settimeout(2)
    a, b = net.node("a", "127.0.0.1"), net.node("b", "127.0.0.1")
    a.address, b.address = udp_a.getsockname(), udp_b.getsockname()
    net.connect(a, b, ["10.0.0.1/32"], ["10.0.0.2/32"])
    dev, dev_plane = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev.settimeout(2)
    shell = NativeShell(a.iface, dev_plane.fileno(), udp_a)
    shell.plane.start(1)
    try:
        # b initiates; a answers as the responder, its new keypair NEXT in C.
        (initiation,) = sends(b.iface.send_packet(ipv4_packet("10.0.0.2", "10.0.0.1"), net.now))
        shell.apply(a.iface.receive_datagram(initiation.data, b.address, time.monotonic()))
        response = udp_b.recv(2048)
        # b's first transport message confirms it: C makes NEXT CURRENT and says so.
        (transport,) = sends(b.iface.receive_datagram(response, a.address, net.now))
        udp_b.sendto(transport.data, a.address)
        assert dev.recv(2048).endswith(ipv4_packet("10.0.0.2", "10.0.0.1"))
        (peer,) = a.iface.peers.values()
        assert peer.current is None and peer.next is not None
        # The upcall is lost, as to a full control socket. (C writes the packet to
        # the device before it promotes the keypair and says so: wait for it.)
        assert select.select([shell.ctrl], [], [], 2)[0]
        lost = dp.parse_upcall(shell.ctrl.recv(2048))
        assert lost.kind is dp.UpcallKind.KEYPAIR_CONFIRMED
        shell.refresh()
        assert peer.current is not None and peer.next is None
        assert peer.current.local_index == shell.plane.stats(shell.ids[peer]).current_local_index
        assert peer.last_handshake_wall is not None
    finally:
        shell.stop()
        for s in (udp_a, udp_b, dev):
            s.close()
