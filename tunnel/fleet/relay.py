"""A TURN relay (RFC 8656) on coturn for peers no direct path reaches, behind
a local port per peer, so that the data plane stays as it is.

One allocation per host: its relayed transport address (on the TURN server) is
what the host publishes as its relayed candidate, and where peers send to
reach it. For each peer reached through it, a UDP socket on 127.0.0.1 stands
in for the peer: WireGuard has it as the peer's endpoint, what WireGuard sends
to it goes to the peer through the allocation, and what the peer sends to the
relayed address comes out of it to the WireGuard socket. WireGuard sees an
ordinary peer at a loopback address; its packets, already encrypted and
authenticated end to end, cross the TURN server unchanged.

aioice's TURN client does the allocation (long-term credentials, refreshing it
before its lifetime ends), the channel bindings (one per peer address, made on
the first datagram sent to it, which also creates the peer's permission, and
refreshed as they are used) and Data indications."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import cast

from aioice import stun, turn

from tunnel.protocol.address import Address, format_address

log = logging.getLogger("pyvpn")

LOOPBACK = "127.0.0.1"
# Seconds an allocation lasts unless refreshed (RFC 8656's default); aioice
# refreshes it at five sixths of that.
LIFETIME = 600
# Seconds after which the next datagram to a peer binds its channel again. A
# binding lasts 600 s but the permission it installs only 300 s (RFC 8656
# sections 9 and 12), and aioice's default of 500 would leave the peer without
# one for minutes: refreshing before 300 s keeps both for a peer that is sent
# to (persistent keepalive sends every 25 s).
CHANNEL_REFRESH = 240


class RelayError(Exception):
    """No allocation on the TURN server: unreachable, refused, or bad credentials."""


class _FromTurn(asyncio.DatagramProtocol):
    """What arrives through the allocation, from a peer."""

    relay: TurnRelay | None = None  # set once the allocation is made

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self.relay is not None:
            self.relay.from_peer(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("TURN relay: a send failed: %s", exc)


class _LocalPort(asyncio.DatagramProtocol):
    """The loopback socket that stands in for one peer."""

    def __init__(self, relay: TurnRelay, peer: Address) -> None:
        self.relay = relay
        self.peer = peer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        # Only the WireGuard socket may use the relay: anyone else on the host
        # would otherwise send through the allocation as us.
        if addr == self.relay.wireguard:
            self.relay.turn.sendto(data, self.peer)


class TurnRelay:
    """A TURN allocation and the local ports of the peers reached through it."""

    def __init__(
        self, turn_transport: turn.TurnTransport, relayed: Address, wireguard: Address
    ) -> None:
        self.turn = turn_transport
        self.relayed_address = relayed
        self.wireguard = wireguard
        self._ports: dict[Address, _LocalPort] = {}

    @classmethod
    async def allocate(
        cls,
        server: Address,
        username: str,
        password: str,
        wireguard_port: int,
        lifetime: int = LIFETIME,
    ) -> TurnRelay:
        """An allocation on the TURN server at `server` (an IP address and port)
        for the WireGuard socket on local UDP port `wireguard_port`."""
        receiver = _FromTurn()
        try:
            transport, _ = await turn.create_turn_endpoint(
                lambda: receiver,
                server,
                username,
                password,
                lifetime=lifetime,
                channel_refresh_time=CHANNEL_REFRESH,
            )
        except (OSError, ConnectionError, stun.TransactionError) as e:
            raise RelayError(f"no TURN allocation on {format_address(server)}: {e}") from None
        relayed = transport.get_extra_info("sockname")
        relay = cls(transport, (str(relayed[0]), int(relayed[1])), (LOOPBACK, wireguard_port))
        receiver.relay = relay
        return relay

    async def port_for(self, peer: Address) -> Address:
        """The local endpoint to give WireGuard for the peer that sends from, and
        is reached at, `peer` (its address as the TURN server sees it)."""
        peer = (str(ipaddress.ip_address(peer[0])), peer[1])
        port = self._ports.get(peer)
        if port is None:
            loop = asyncio.get_running_loop()
            _, protocol = await loop.create_datagram_endpoint(
                lambda: _LocalPort(self, peer), local_addr=(LOOPBACK, 0)
            )
            port = self._ports[peer] = protocol
            # The channel bound now (aioice binds on the first datagram to a peer,
            # an empty one here, which WireGuard drops), not on WireGuard's first:
            # the peer's datagrams to the relayed address get through only once the
            # allocation has a permission for its address, and it may send first.
            self.turn.sendto(b"", peer)
        assert port.transport is not None
        host, number = port.transport.get_extra_info("sockname")[:2]
        return (host, number)

    def from_peer(self, data: bytes, source: Address) -> None:
        port = self._ports.get(source) or self._roamed(source)
        if port is not None and port.transport is not None:
            port.transport.sendto(data, self.wireguard)

    def _roamed(self, source: Address) -> _LocalPort | None:
        """A peer that now reaches the relay from another port of its address (a
        NAT that mapped it anew) keeps its local port, and is answered there."""
        ports = [p for p in self._ports.values() if p.peer[0] == source[0]]
        if len(ports) != 1:
            return None
        port = ports[0]
        del self._ports[port.peer]
        port.peer = source
        self._ports[source] = port
        return port

    def close(self) -> None:
        """Close the local ports and give the allocation up (in the background:
        aioice deletes it on the server, then closes its socket)."""
        for port in self._ports.values():
            if port.transport is not None:
                port.transport.close()
        self._ports.clear()
        self.turn.close()
