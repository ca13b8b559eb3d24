"""The pure-Python data plane: the event loop reads the device and the socket
directly (add_reader, no transports, batches per wakeup) and carries out the
core's actions. Always available; the fallback when native/ is not built."""

import asyncio
import logging
import os
import socket
import time

from . import udp
from .constants import TIMER_TICK
from .interface import Action, Deliver, Interface, Send
from .udp import from_sockaddr

log = logging.getLogger("pyvpn")

BATCH = 64  # packets per wakeup before yielding to the other file descriptor
MAX_DATAGRAM = 65535


class PythonPlane:
    name = "python"

    def __init__(self, iface: Interface, dev_fd: int, sock: socket.socket) -> None:
        self.iface = iface
        self.dev_fd = dev_fd
        self.sock = sock
        self._tick_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.dev_fd, self._device_readable)
        loop.add_reader(self.sock.fileno(), self._socket_readable)
        self.apply(self.iface.start(time.monotonic()))
        self._tick()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.dev_fd)
            self._loop.remove_reader(self.sock.fileno())
        if self._tick_handle is not None:
            self._tick_handle.cancel()

    def refresh(self) -> None:
        """The core already holds every figure: nothing to copy."""

    def _tick(self) -> None:
        self.apply(self.iface.tick(time.monotonic()))
        assert self._loop is not None
        self._tick_handle = self._loop.call_later(TIMER_TICK, self._tick)

    def _device_readable(self) -> None:
        now = time.monotonic()
        for _ in range(BATCH):
            try:
                packet = os.read(self.dev_fd, MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("reading the device failed: %s", e.strerror)
                return
            self.apply(self.iface.send_packet(packet, now))

    def _socket_readable(self) -> None:
        now = time.monotonic()
        for _ in range(BATCH):
            try:
                data, sockaddr = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP errors from earlier sends surface here (ECONNREFUSED): not ours to act on.
                continue
            self.apply(self.iface.receive_datagram(data, from_sockaddr(sockaddr), now))

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                udp.send(self.sock, action.destination, action.data)
            elif isinstance(action, Deliver):
                try:
                    os.write(self.dev_fd, action.packet)
                except OSError as e:
                    log.debug("device write failed: %s", e.strerror)
