"""The native plane's test harness: the plane on a fake device (a SOCK_DGRAM
socketpair, one packet per read, like TUN), its control channel a SOCK_SEQPACKET
socketpair, and a remote peer made of a UDP socket and `cryptography`'s
ChaCha20Poly1305, which shares nothing with the C code."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunnel.planes import dp

WAIT = 2.0


class Harness:
    """A NativePlane on a fake device, a dual-stack UDP socket and a control pair."""

    def __init__(self, tap: bool = False, vnet: bool = False, mtu: int = 1420) -> None:
        self.dev_plane, self.dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ctrl_plane, self.ctrl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.udp.bind(("::", 0))
        self.port = self.udp.getsockname()[1]
        self.plane = dp.NativePlane(
            self.dev_plane.fileno(),
            self.udp.fileno(),
            self.ctrl_plane.fileno(),
            tap=tap,
            vnet_hdr=vnet,
            mtu=mtu,
        )
        self.dev.settimeout(WAIT)
        self.ctrl.settimeout(WAIT)

    def start(self) -> None:
        self.plane.start(1)

    def close(self) -> None:
        self.plane.close()
        for s in (self.dev_plane, self.dev, self.ctrl_plane, self.ctrl, self.udp):
            s.close()

    def upcall(self, timeout: float = WAIT) -> dp.Upcall:
        """The next upcall but transport events (the timers', test_native_shell.py)."""
        self.ctrl.settimeout(timeout)
        while True:
            up = dp.parse_upcall(self.ctrl.recv(70000))
            if up.kind is not dp.UpcallKind.EVENTS:
                return up

    def no_upcall(self, timeout: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            self.upcall(timeout)

    def read_dev(self, timeout: float = WAIT) -> bytes:
        self.dev.settimeout(timeout)
        return self.dev.recv(70000)

    def no_dev(self, timeout: float = 0.3) -> None:
        self.dev.settimeout(timeout)
        with pytest.raises(TimeoutError):
            self.dev.recv(70000)


class Remote:
    """The far end of one peer: its own UDP socket and session keys."""

    def __init__(
        self,
        h: Harness,
        peer_id: int,
        local_index: int,
        remote_index: int,
        allowed: tuple[str, ...] = (),
        tap: bool = False,
    ) -> None:
        self.h, self.peer_id, self.tap = h, peer_id, tap
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(WAIT)
        self.counter = 0
        h.plane.add_peer(peer_id)
        h.plane.set_endpoint(peer_id, self.sock.getsockname())
        h.plane.set_allowed_ips(peer_id, allowed)
        self.rekey(local_index, remote_index)

    def rekey(self, local_index: int, remote_index: int) -> None:
        """New session keys, installed as the initiator's: CURRENT at once."""
        self.local_index, self.remote_index = local_index, remote_index
        self.to_remote, self.from_remote = os.urandom(32), os.urandom(32)
        self.counter = 0
        self.h.plane.install_keypair(
            self.peer_id, True, local_index, remote_index, self.to_remote, self.from_remote
        )

    def seal(
        self,
        plaintext: bytes,
        counter: int | None = None,
        index: int | None = None,
        key: bytes | None = None,
    ) -> bytes:
        if counter is None:
            counter, self.counter = self.counter, self.counter + 1
        if not self.tap:
            plaintext += bytes(-len(plaintext) % 16)
        head = bytes([4, 1 if self.tap else 0, 0, 0]) + struct.pack(
            "<IQ", self.local_index if index is None else index, counter
        )
        nonce = bytes(4) + struct.pack("<Q", counter)
        return head + ChaCha20Poly1305(key or self.from_remote).encrypt(nonce, plaintext, None)

    def send(self, plaintext: bytes, **kw: object) -> None:
        self.sock.sendto(self.seal(plaintext, **kw), ("127.0.0.1", self.h.port))

    def recv(
        self, timeout: float = WAIT, key: bytes | None = None, index: int | None = None
    ) -> tuple[int, bytes, bytes]:
        """Returns (counter, plaintext, raw message) of one message from the plane."""
        self.sock.settimeout(timeout)
        msg = self.sock.recv(70000)
        assert msg[:4] == bytes([4, 1 if self.tap else 0, 0, 0])
        receiver, counter = struct.unpack_from("<IQ", msg, 4)
        assert receiver == (self.remote_index if index is None else index)
        nonce = bytes(4) + struct.pack("<Q", counter)
        return counter, ChaCha20Poly1305(key or self.to_remote).decrypt(nonce, msg[16:], None), msg

    def nothing(self, timeout: float = 0.3) -> None:
        self.sock.settimeout(timeout)
        with pytest.raises(TimeoutError):
            self.sock.recv(70000)

    def delivered(self, packets: list[bytes]) -> list[bytes]:
        """`packets` sent from here, and what the plane wrote to its device for them,
        a few at a time: the fake device queues 10 datagrams at most."""
        out = []
        for i in range(0, len(packets), 8):
            batch = packets[i : i + 8]
            for pkt in batch:
                self.send(pkt)
            out += [self.h.read_dev() for _ in batch]
        return out

    def close(self) -> None:
        self.sock.close()
