"""What both data planes share: the core's start and 100 ms tick on the event
loop, their readers, and carrying out the core's Send and Deliver actions and
their batches. A plane supplies what it reads and how it handles the rest of the actions."""

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from tunnel.core.actions import Action, Deliver, DeliverBatch, Send, SendBatch
from tunnel.core.interface import Interface
from tunnel.core.reconfig import Applied
from tunnel.host import clock, udp
from tunnel.protocol.address import Address
from tunnel.protocol.constants import TIMER_TICK
from tunnel.protocol.stun import is_stun

log = logging.getLogger("pyvpn")


class Plane:
    name: str
    # Written before each packet Python delivers into the device (a virtio_net_hdr
    # when the device was opened with IFF_VNET_HDR).
    device_prefix = b""
    # Threads beside the I/O worker that seal and open (the native plane's).
    crypto_workers = 0

    def __init__(self, iface: Interface, dev_fd: int, sock: socket.socket) -> None:
        self.iface = iface
        self.dev_fd = dev_fd
        self.sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._watched: list[int] = []
        # Who takes the STUN messages that arrive on the socket: a STUN client
        # (tunnel/fleet/stun.py) that sends its requests out of this socket with
        # send_datagram(), so that the mapping it learns is the one a NAT gives
        # WireGuard's packets. Without one they go to the core, which drops them.
        self.stun_listener: Callable[[bytes, Address], None] | None = None

    def readers(self) -> dict[int, Callable[[], None]]:
        """File descriptors the event loop watches for this plane, and their handlers."""
        raise NotImplementedError

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for fd, handler in self.readers().items():
            loop.add_reader(fd, handler)
            self._watched.append(fd)
        self.apply(self.iface.start(clock.now()))
        self._tick()

    def stop(self) -> None:
        if self._loop is not None:
            for fd in self._watched:
                self._loop.remove_reader(fd)
        self._watched.clear()
        if self._tick_handle is not None:
            self._tick_handle.cancel()

    def replace_socket(self, new: socket.socket) -> None:
        """Listen on `new` from now on (a new listen port). It takes over the old
        socket's fd number, so whatever holds that number (C, the socket object)
        follows without being told."""
        fd = self.sock.fileno()
        handler = self.readers().get(fd) if fd in self._watched else None
        if handler is not None and self._loop is not None:
            self._loop.remove_reader(fd)
        os.dup2(new.fileno(), fd, inheritable=False)
        new.close()
        if handler is not None and self._loop is not None:
            self._loop.add_reader(fd, handler)

    def send_datagram(self, data: bytes, destination: Address) -> None:
        """Send a datagram of another protocol (STUN) out of the WireGuard socket."""
        udp.send_all(self.sock, destination, [data])

    def took_stun(self, data: bytes, source: Address) -> bool:
        """Hand a STUN message to the listener, if there is one; whether it was."""
        if self.stun_listener is None or not is_stun(data):
            return False
        self.stun_listener(data, source)
        return True

    def refresh(self) -> None:
        """Bring the core's figures up to date before it is read (a no-op where
        the core itself moves every packet)."""

    def own_stats(self) -> dict[str, Any] | None:
        """What the plane counts itself, beyond the core's figures (None: nothing)."""
        return None

    def _tick(self) -> None:
        try:
            self.refresh()
            self.apply(self.iface.tick(clock.now()))
        except Exception:
            # One failure must not stop every timer of every peer for good.
            log.exception("a timer tick failed; the next runs as planned")
        finally:
            assert self._loop is not None
            self._tick_handle = self._loop.call_later(TIMER_TICK, self._tick)

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendBatch):
                udp.send_all(self.sock, action.destination, action.datagrams)
            elif isinstance(action, DeliverBatch):
                self._deliver(action.packets)
            elif isinstance(action, Send):
                udp.send_all(self.sock, action.destination, [action.data])
            elif isinstance(action, Deliver):
                self._deliver([action.packet])
            else:
                self.carry_out(action)

    def set_mtu(self, mtu: int) -> None:
        """The device's MTU changed under us (`ip link set mtu`): padding follows it."""
        self.iface.mtu = mtu

    def _deliver(self, packets: list[bytes]) -> None:
        fd, prefix = self.dev_fd, self.device_prefix
        for packet in packets:
            try:
                os.write(fd, prefix + packet if prefix else packet)
            except OSError as e:
                log.debug("device write failed: %s", e.strerror)

    def reconfigured(self, applied: Applied) -> None:
        """The core's peers changed (reconfig.apply); a plane holding its own copy
        of them follows before the change's actions are carried out."""
        self.apply(applied.actions)

    def reverted(self) -> None:
        """The core was put back as it was before a change this plane refused
        partway (reconfig.Before): a plane holding its own copy of the peers takes
        them from the core again."""

    def carry_out(self, action: Action) -> None:
        """Keypair and Transmit actions are for a plane that moves transport
        messages outside the core; where the core moves them, it has already
        done what they say."""
