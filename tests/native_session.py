"""A NativeShell and a sans-IO peer over loopback UDP, for the tests of the
native shell (planes/test_native_shell.py) and of set requests
(control/test_set_request.py). The device is a socketpair."""

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from tunnel.core.actions import Action, Send, SendBatch
from tunnel.host import clock
from tunnel.planes import dp
from tunnel.planes.native import NativeShell
from tunnel.protocol.noise import INITIAL_CHAINING_KEY

from .packets import ipv4_packet
from .simnet import Node, SimNet, unbatched


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
    confirmation: bytes  # b's first transport message, sent only if confirm
    dev: socket.socket  # a's device, this end: what is written here C reads

    def from_device(self, packet: bytes) -> None:
        """A packet read from a's device (after a virtio_net_hdr of no offload)."""
        self.dev.send(bytes(dp.VNET_HDR_LEN) + packet)


def answer(s: "Session", initiation: bytes) -> list[Action]:
    """What a's core makes of b's initiation once C's handshake worker has
    consumed it, as the worker's upcall hands it over (native/handshake.c)."""
    identity = s.a.iface.identity
    c = dp.consume_initiation(
        identity.private_key,
        INITIAL_CHAINING_KEY,
        identity.responder_hash,
        initiation,
        s.a.iface.randbytes(32),
    )
    return s.a.iface.receive_consumed_initiation(
        initiation, s.b.address, c.consumed, c.start, False, clock.now()
    )


@contextlib.contextmanager
def confirmed_session(confirm: bool = True) -> Iterator[Session]:
    with peers() as s:
        # b initiates; a answers as the responder, its new keypair NEXT in C.
        (initiation,) = sends(s.b.iface.send_packet(ipv4_packet("10.0.0.2", "10.0.0.1"), s.net.now))
        s.shell.apply(answer(s, initiation.data))
        response = s.udp_b.recv(2048)
        # b's first transport message confirms it: C makes NEXT CURRENT and says so.
        (transport,) = sends(s.b.iface.receive_datagram(response, s.a.address, s.net.now))
        if confirm:
            s.udp_b.sendto(transport.data, s.a.address)
            assert s.dev.recv(2048).endswith(ipv4_packet("10.0.0.2", "10.0.0.1"))
        s.confirmation = transport.data
        yield s


@contextlib.contextmanager
def peers() -> Iterator[Session]:
    """a behind a NativeShell and b, peers, over loopback UDP; no session yet."""
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
        yield Session(net, a, b, shell, udp_b, b"", dev)
    finally:
        shell.stop()
        for s in (udp_a, udp_b, dev):
            s.close()
