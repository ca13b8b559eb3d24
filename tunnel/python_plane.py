"""The pure-Python data plane: the event loop reads the device and the socket
directly (add_reader, no transports, batches per wakeup) and the core does the
rest. Always available; the fallback when native/ is not built."""

import logging
import os
import time
from collections.abc import Callable

from .plane import Plane
from .udp import from_sockaddr

log = logging.getLogger("pyvpn")

BATCH = 64  # packets per wakeup before yielding to the other file descriptor
MAX_DATAGRAM = 65535


class PythonPlane(Plane):
    name = "python"

    def readers(self) -> dict[int, Callable[[], None]]:
        return {self.dev_fd: self._device_readable, self.sock.fileno(): self._socket_readable}

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
