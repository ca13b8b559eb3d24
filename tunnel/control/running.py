"""A tunnel that is up, as the control plane reads and changes it: what the UAPI
server reports (status, uapi), what a set request changes (set_request), what
SaveConfig writes back (save_config). daemon.py makes one and serves it.

Its listen port changes by an explicit rebind, as wireguard-go's BindUpdate:
`bind` opens the new socket, which is the step that can fail and then changes
nothing; `Tunnel.rebind` hands it to the plane and records the port the new
socket itself is bound to (listen_port=0 asks the kernel for one)."""

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from tunnel.core.interface import Interface
from tunnel.host import udp
from tunnel.host.full_tunnel import FullTunnel
from tunnel.host.routing import InterfaceAddress
from tunnel.planes.base import Plane

from .config import Config

log = logging.getLogger("pyvpn")


@dataclass(frozen=True)
class Bound:
    """A UDP socket bound for a new listen port, not yet the tunnel's."""

    sock: socket.socket
    port: int


def bind(port: int) -> Bound:
    """The new socket, bound now; udp.SocketError if the port cannot be had."""
    sock = udp.open_socket(port)
    return Bound(sock, sock.getsockname()[1])


@dataclass(kw_only=True)
class Tunnel:
    """A tunnel that is up, with what `pyvpn show` reports of its setup."""

    name: str
    iface: Interface
    plane: Plane
    listen_port: int
    table: str | int  # config.InterfaceConfig.table
    full_tunnel: FullTunnel
    # As the config gives them, and the bridge joined at start (tap).
    addresses: list[InterfaceAddress] = field(default_factory=list)
    bridge: str | None = None
    user: str | None = None  # the one run as after setup; None: root
    # For its hooks and SaveConfig; none under pyvpn-wg, where wg-quick does both.
    config: Config | None = None
    # One set request at a time: each ends with netlink work in an executor thread.
    setting: asyncio.Lock = field(default_factory=asyncio.Lock)
    # What a layer above adds to the status (control/status.py): the fleet's agent
    # its own state, and per peer (by public key) which host it is and how reached.
    notes: dict[str, Any] = field(default_factory=dict)
    peer_notes: dict[bytes, dict[str, Any]] = field(default_factory=dict)

    def rebind(self, new: Bound) -> None:
        """Listen on `new` from now on; the old socket is closed. Cannot fail."""
        self.plane.replace_socket(new.sock)  # the plane owns the socket from here
        self.listen_port = new.port
        log.info("%s: now listening on UDP port %d", self.name, self.listen_port)
