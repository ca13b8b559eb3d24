"""Where a fleet host may be reached, one provider per kind of candidate
(roster.KINDS): its own addresses, the public mapping of its WireGuard socket
that a STUN server reports, and the relayed address of its TURN allocation.

The agent asks every provider each time it publishes (every few seconds), so
an answer must come at once: STUN and TURN, which wait on a server, are asked
in a task of their own (Refreshed) and the provider answers with what was last
learnt. A server that does not answer is logged once, and the host publishes
without that candidate until it answers again."""

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from tunnel.control.running import Tunnel
from tunnel.host import netlink
from tunnel.protocol.address import Address, format_address

from .relay import RelayError, TurnRelay
from .roster import Candidate
from .settings import Relay
from .stun import StunClient, StunError

log = logging.getLogger("pyvpn")

# Seconds between STUN questions: a NAT that maps the socket anew (a router's
# restart, a new uplink) is noticed within this, well before a peer gives up.
STUN_REFRESH = 30.0
# Seconds between looks at the allocation: made again after a failure or a
# rebind (the relay forwards to the WireGuard socket's port).
RELAY_CHECK = 5.0
# How long the first publication waits for a server's first answer.
FIRST_WAIT = 2.0


class CandidateProvider(Protocol):
    """Where a host may be reached, of one kind (roster.KINDS)."""

    async def candidates(self, tunnel: Tunnel) -> list[Candidate]: ...

    def close(self) -> None: ...


class LocalAddresses:
    """The host's own addresses, with the tunnel's listen port."""

    async def candidates(self, tunnel: Tunnel) -> list[Candidate]:
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, netlink.host_addresses, tunnel.name)
        return [Candidate("local", format_address((str(a.ip), tunnel.listen_port))) for a in found]

    def close(self) -> None:
        pass


async def resolve(host: str, port: int) -> Address:
    """A server's address: an IP address as it is, a name looked up (IPv4 first)."""
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    found.sort(key=lambda info: info[0] != socket.AF_INET)
    return (str(found[0][4][0]), port)


class Refreshed:
    """A value fetched from a server every `interval` seconds in a task of its
    own; a failure is logged once, until a fetch succeeds again."""

    def __init__(
        self, what: str, fetch: Callable[[], Awaitable[list[Candidate]]], interval: float
    ) -> None:
        self.what = what
        self.fetch = fetch
        self.interval = interval
        self.value: list[Candidate] = []
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()
        self._failing = False

    async def get(self, name: str) -> list[Candidate]:
        if self._task is None:
            self._task = asyncio.create_task(self._run(name))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), FIRST_WAIT)
        return self.value

    async def _run(self, name: str) -> None:
        while True:
            try:
                self.value = await self.fetch()
                if self._failing:
                    log.info("%s: fleet: %s answers again", name, self.what)
                self._failing = False
            except (OSError, StunError, RelayError) as e:
                self.value = []
                if not self._failing:
                    log.warning("%s: fleet: %s: %s; publishing without it", name, self.what, e)
                self._failing = True
            self._first.set()
            await asyncio.sleep(self.interval)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class MappedAddress:
    """The WireGuard socket's public mapping, from the STUN server at
    host:port, asked out of the socket itself (the agent's StunClient)."""

    def __init__(self, client: StunClient, server: tuple[str, int]) -> None:
        self.client = client
        self.server = server
        self.refreshed = Refreshed("STUN server " + format_address(server), self._ask, STUN_REFRESH)

    async def candidates(self, tunnel: Tunnel) -> list[Candidate]:
        return await self.refreshed.get(tunnel.name)

    async def _ask(self) -> list[Candidate]:
        mapped = await self.client.mapped_address(await resolve(*self.server))
        return [Candidate("mapped", format_address(mapped))]

    def close(self) -> None:
        self.refreshed.close()


class RelayedAddress:
    """A TURN allocation on the fleet's relay, made once and kept (aioice
    refreshes it), made anew when the listen port changes; its relayed address
    is the candidate. `relay` is the allocation the agent sends through."""

    def __init__(self, settings: Relay) -> None:
        self.settings = settings
        self.relay: TurnRelay | None = None
        self.port = 0  # the listen port the allocation forwards to
        self.tunnel: Tunnel | None = None
        where = format_address((settings.host, settings.port))
        self.refreshed = Refreshed("TURN server " + where, self._allocate, RELAY_CHECK)

    async def candidates(self, tunnel: Tunnel) -> list[Candidate]:
        self.tunnel = tunnel
        return await self.refreshed.get(tunnel.name)

    async def _allocate(self) -> list[Candidate]:
        assert self.tunnel is not None
        port = self.tunnel.listen_port
        if self.relay is not None and self.port != port:
            log.info("%s: fleet: listening on a new port; a new TURN allocation", self.tunnel.name)
            self.relay.close()
            self.relay = None
        if self.relay is None:
            s = self.settings
            server = await resolve(s.host, s.port)
            self.relay = await TurnRelay.allocate(server, s.user, s.password, port)
            self.port = port
            log.info("%s: fleet: relayed at %s", self.tunnel.name,
                     format_address(self.relay.relayed_address))  # fmt: skip
        return [Candidate("relayed", format_address(self.relay.relayed_address))]

    def close(self) -> None:
        self.refreshed.close()
        if self.relay is not None:
            self.relay.close()
            self.relay = None


def providers(
    stun_server: tuple[str, int] | None, relay: Relay | None, client: StunClient
) -> tuple[list[CandidateProvider], RelayedAddress | None]:
    """The providers for a host with these servers, and the relay's among them."""
    found: list[CandidateProvider] = [LocalAddresses()]
    if stun_server is not None:
        found.append(MappedAddress(client, stun_server))
    relayed = None if relay is None else RelayedAddress(relay)
    if relayed is not None:
        found.append(relayed)
    return found, relayed
