"""The pure-Python data plane: the event loop reads the device and the socket
directly (add_reader, no transports, batches per wakeup) and the core does the
rest. Always available; the fallback when native/ is not built."""

import logging
import os
import socket
from collections.abc import Callable

from tunnel.core.drops import Drop
from tunnel.core.interface import Interface
from tunnel.host import clock, udp
from tunnel.protocol.address import Address
from tunnel.protocol.constants import MESSAGE_TRANSPORT, TIMER_TICK, UNDER_LOAD_HOLD
from tunnel.protocol.ratelimiter import RateLimiter, source_key

from .base import Plane

log = logging.getLogger("pyvpn")

BATCH = 64  # packets per wakeup before yielding to the other file descriptor
MAX_DATAGRAM = 65535
TRANSPORT = bytes([MESSAGE_TRANSPORT])


class PythonPlane(Plane):
    name = "python"

    def __init__(self, iface: Interface, dev_fd: int, sock: socket.socket) -> None:
        super().__init__(iface, dev_fd, sock)
        # While the socket overflows, a datagram that is not a transport message
        # gets its source's share before the core judges it (native/upcall.c does
        # the same in C, and says why only overflows count): one source flooding
        # handshakes cannot crowd out the peers handshaking beside it.
        self.sources = RateLimiter()
        self.behind_until = float("-inf")
        self.drops = udp.drops(sock)
        self.drops_read_at = float("-inf")

    def readers(self) -> dict[int, Callable[[], None]]:
        return {self.dev_fd: self._device_readable, self.sock.fileno(): self._socket_readable}

    def _device_readable(self) -> None:
        packets: list[bytes] = []
        read, fd = os.read, self.dev_fd
        for _ in range(BATCH):
            try:
                packets.append(read(fd, MAX_DATAGRAM))
            except BlockingIOError:
                break
            except OSError as e:
                log.warning("reading the device failed: %s", e.strerror)
                break
        if packets:
            self.apply(self.iface.send_packets(packets, clock.now()))

    def _socket_readable(self) -> None:
        now = clock.now()
        if now >= self.drops_read_at + TIMER_TICK:  # a system call: not every wakeup
            self.drops_read_at = now
            drops = udp.drops(self.sock)
            if drops != self.drops:  # the socket dropped datagrams for a full buffer
                self.drops, self.behind_until = drops, now + UNDER_LOAD_HOLD
        datagrams: list[tuple[bytes, Address]] = []
        recvfrom, from_sockaddr = self.sock.recvfrom, udp.from_sockaddr
        for _ in range(BATCH):
            try:
                data, sockaddr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # ICMP errors from earlier sends surface here (ECONNREFUSED): not ours to act on.
                continue
            source = from_sockaddr(sockaddr)
            if (
                now < self.behind_until
                and data[:1] != TRANSPORT
                and not self.sources.allow(source_key(source[0]), now)
            ):
                self.iface.drops[Drop.RATELIMITED] += 1
                continue
            if data[:1] != TRANSPORT and self.took_stun(data, source):
                continue
            datagrams.append((data, source))
        if datagrams:
            self.apply(self.iface.receive_datagrams(datagrams, now))
