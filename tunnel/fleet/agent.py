"""A running fleet host's side of the fleet, started by the daemon when the
config has a `[fleet]` table.

Before the tunnel comes up, own_admission() finds the host's own record by its
public key: its address comes from it, and a host not admitted, or revoked,
does not start. Once up, the Agent runs three loops:

- follow: the registry read whole, then watched from the next revision; after
  an outage the watch resumes where it stopped (from the whole again if etcd
  compacted that far), so what changed meanwhile is caught up on.
- publish: the host's endpoint candidates, under an etcd lease kept alive, so
  that a dead host's vanish. The candidates come from providers.py: the host's
  addresses, the STUN-mapped address of its WireGuard socket, the relayed
  address of its TURN allocation.
- paths: each fleet peer is tried at its candidates, best first, until a
  handshake answers; `pyvpn show` says which candidate and since when. While a
  peer is reached through a relay, its direct candidates are asked every
  DIRECT_RETRY seconds (a STUN Binding request out of the WireGuard socket,
  which the peer's agent answers); one that answers becomes the path.

A relayed path between two hosts goes through one TURN allocation, the same
seen from both ends: that of the host with the lower public key when both
publish a relayed candidate, else that of the one host that does. Its owner
gives WireGuard its relay's local port for the peer (relay.py), which sends
to the peer's mapped address (else its first local one) and follows the peer
to whatever port of that address it answers from: a peer behind a symmetric
NAT is met too. The other host has the owner's relayed address as the peer's
endpoint and sends there straight from its WireGuard socket. Hosts behind
symmetric NATs, on one end or both, meet this way (tests/fleet/test_nat.py).

Peers are added, changed and removed through the path `wg set` takes
(control/set_request.py), one transaction per change. Static [[peer]] entries
stay as they are. While the registry is down, nothing is removed: the tunnels
keep working as they are, and the agent retries with backoff."""

import asyncio
import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunnel.control.running import Tunnel
from tunnel.control.set_request import set_request
from tunnel.host import clock, netlink
from tunnel.host.udp import split_address
from tunnel.protocol import keys
from tunnel.protocol.address import Address, format_address
from tunnel.protocol.allowed_ips import Network
from tunnel.protocol.constants import REKEY_TIMEOUT

from . import roster as roster_module
from .providers import CandidateProvider, RelayedAddress, providers
from .record import Admission
from .registry import Compacted, Registry, RegistryError, Watch
from .relay import TurnRelay
from .roster import Candidate, Layout, Member, Roster, encode_candidates
from .settings import FleetSettings
from .stun import StunClient, StunError

log = logging.getLogger("pyvpn")

LEASE_TTL = 10  # seconds: a killed host's endpoints are gone this long after
KEEP_ALIVE = 3.0  # seconds between renewals, several to one TTL
# A candidate has one handshake initiation and until SWITCH_AHEAD before
# WireGuard's next (REKEY_TIMEOUT after it) to be answered; then the peer's
# endpoint moves on, so that WireGuard's next goes to the next candidate (an
# initiation of our own would be held back as too soon after the last).
PATH_TICK = 0.25
SWITCH_AHEAD = 1.0
MAX_BACKOFF = 8.0
# What keeps a NAT's mapping, and a path's liveness known (wg(8)'s "sensible interval").
KEEPALIVE = 25
# Seconds between asks at a relayed peer's direct candidates: under the 30 s a
# NAT keeps an unanswered flow open, so that whichever end asks second finds
# the other's NAT opened toward it by the other's ask.
DIRECT_RETRY = 20.0
PROBE_RETRANSMISSIONS = 2  # sends at 0, 0.5 and 1.5 s; no answer by 3.5 s


class NotAdmitted(Exception):
    """The host cannot join: not admitted, revoked, or no registry to ask."""


def own_admission(settings: FleetSettings, public_key: bytes) -> Admission:
    """The host's admission, read from the registry now (blocking)."""
    registry = Registry(settings)
    layout = Layout(settings.prefix)
    roster = Roster(settings.verifier(), layout)
    try:
        _, values = registry.snapshot(layout.all())
    except RegistryError as e:
        raise NotAdmitted(f"cannot read the fleet's registry: {e}") from None
    finally:
        registry.close()
    now = time.time()
    for key, value in values:
        roster.put(key, value, now)
    member = roster.members(now).get(public_key)
    if member is not None:
        return member.admission
    shown = keys.encode(public_key)
    if any(r.public_key == public_key for r in roster.revocations.values()):
        raise NotAdmitted(f"this host's key {shown} is revoked from fleet {settings.prefix}")
    raise NotAdmitted(
        f"this host's key {shown} is not admitted to fleet {settings.prefix}: "
        f"pyvpn fleet admit DIR NAME --address CIDR --public-key {shown}"
    )


@dataclass
class Path:
    """How one fleet peer is being reached: its candidates, best first, the one
    tried now, and since when it answers there."""

    member: Member
    order: list[Candidate]
    tried: int = 0
    tried_at: float = 0.0  # when the current candidate became the endpoint (host/clock.py)
    reached: Candidate | None = None
    reached_via: str | None = None  # WireGuard's endpoint for the peer there
    since: float | None = None  # wall time `reached` started carrying the tunnel
    # What WireGuard's endpoint was set to for which candidate: the candidate
    # itself, or for a relayed one through this host's relay, its local port.
    vias: dict[str, Candidate] = field(default_factory=dict)
    probed_at: float = 0.0  # monotonic: the last ask at the direct candidates

    @property
    def current(self) -> Candidate | None:
        return self.order[self.tried] if self.order else None


class Agent:
    def __init__(
        self,
        tunnel: Tunnel,
        settings: FleetSettings,
        own: Admission,
    ) -> None:
        self.tunnel = tunnel
        self.settings = settings
        self.own = own
        # STUN out of the WireGuard socket: the STUN server's answers, and the
        # fleet peers' asks at a direct path (stun.py answers them).
        self.stun = StunClient(tunnel.plane.send_datagram)
        self.providers: list[CandidateProvider]
        self.relayed: RelayedAddress | None
        self.providers, self.relayed = providers(settings.stun, settings.relay, self.stun)
        self._relay_seen: TurnRelay | None = None
        self._probes: set[asyncio.Task[None]] = set()
        self.layout = Layout(settings.prefix)
        self.roster = Roster(settings.verifier(), self.layout)
        self.registry = Registry(settings)
        self.revision = 0  # the last one taken in; 0: none yet, read the whole
        self.paths: dict[bytes, Path] = {}
        static = tunnel.config.peers if tunnel.config is not None else []
        self.static = {p.public_key for p in static}
        self.registry_down_since: float | None = None
        self.published: list[Candidate] = []
        self.networks: list[Network] = []  # the underlay's, this host is on
        self._mode_refused: set[str] = set()
        self._revoked = False  # this host's own revocation, once logged
        self._report()

    async def run(self) -> None:
        self.tunnel.plane.stun_listener = self.stun.received
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.follow())
                group.create_task(self.publish())
                group.create_task(self.follow_paths())
        finally:
            self.tunnel.plane.stun_listener = None
            for task in self._probes:
                task.cancel()
            for provider in self.providers:
                provider.close()
            self.registry.close()

    @property
    def relay(self) -> TurnRelay | None:
        return None if self.relayed is None else self.relayed.relay

    # The registry, followed.

    async def follow(self) -> None:
        backoff = 0.5
        while True:
            try:
                if self.revision == 0:
                    await self.read_whole()
                await self.watch()
            except Compacted as e:
                log.warning("%s: fleet: %s; reading the registry whole", self.tunnel.name, e)
                self.revision = 0
            except RegistryError as e:
                self.down(str(e))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = 0.5

    async def read_whole(self) -> None:
        revision, values = await asyncio.to_thread(self.registry.snapshot, self.layout.all())
        self.up()
        # What the registry no longer holds goes; revocations stay (roster.py).
        self.roster.admissions.clear()
        self.roster.hints.clear()
        now = time.time()
        for key, value in values:
            self._take(key, value, now)
        self.revision = revision
        await self.apply()

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        stream: Watch = await asyncio.to_thread(
            self.registry.watch, self.layout.all(), self.revision + 1
        )
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def pump() -> None:
            try:
                for event in stream.events():
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except RegistryError as e:
                loop.call_soon_threadsafe(queue.put_nowait, e)

        threading.Thread(target=pump, name="fleet-watch", daemon=True).start()
        self.up()
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                now = time.time()
                for item in batch:
                    if isinstance(item, RegistryError):
                        raise item
                    if item.value is None:
                        self.roster.delete(item.key)
                    else:
                        self._take(item.key, item.value, now)
                    self.revision = max(self.revision, item.revision)
                await self.apply()
        finally:
            stream.close()

    def _take(self, key: str, value: bytes, now: float) -> None:
        refusal = self.roster.put(key, value, now)
        if refusal is not None:
            log.warning("%s: fleet: %s", self.tunnel.name, refusal)
        self._report()

    def down(self, why: str) -> None:
        if self.registry_down_since is None:
            self.registry_down_since = time.time()
            log.warning(
                "%s: fleet: %s; the tunnels stay as they are, retrying", self.tunnel.name, why
            )
            self._report()

    def up(self) -> None:
        if self.registry_down_since is not None:
            log.info("%s: fleet: the registry answers again", self.tunnel.name)
            self.registry_down_since = None
            self._report()

    # Peers, changed live.

    async def apply(self, rerank: bool = False) -> None:
        """Make the tunnel's fleet peers what the roster says; with `rerank`, order
        every peer's candidates anew (this host's relay changed)."""
        members = self.roster.members(time.time())
        if not self._revoked and self._own_revoked():
            self._revoked = True
            log.error("%s: fleet: this host is revoked; its peers drop it", self.tunnel.name)
        wanted = {}
        for key, member in members.items():
            if key == self.own.public_key or key in self.static:
                continue
            if member.admission.mode != self.own.mode:
                if member.admission.name not in self._mode_refused:
                    self._mode_refused.add(member.admission.name)
                    log.warning("%s: fleet: %s is a %s host, this one %s: not a peer",
                                self.tunnel.name, member.admission.name,
                                member.admission.mode, self.own.mode)  # fmt: skip
                continue
            wanted[key] = member
        lines: list[str] = []
        for key in self.paths.keys() - wanted.keys():
            log.info(
                "%s: fleet: %s leaves", self.tunnel.name, self.paths[key].member.admission.name
            )
            lines += [f"public_key={key.hex()}", "remove=true"]
            del self.paths[key]
        for key, member in wanted.items():
            path = self.paths.get(key)
            if path is not None and path.member == member and not rerank:
                continue
            order = self.ranked(member)
            if path is None or path.member.admission != member.admission:
                log.info("%s: fleet: %s joins at %s", self.tunnel.name, member.admission.name,
                         member.admission.address)  # fmt: skip
                self.paths[key] = path = Path(member, order)
                await self._open_relay(path)
                lines += await self._peer_lines(key, member.admission, path)
            else:
                path.member = member
                keep = path.reached or path.current
                path.order = order
                await self._open_relay(path)
                if keep in order:
                    path.tried = order.index(keep)
                elif order:
                    # A relay allocated anew: its new address, else the best.
                    kinds = [c.kind for c in order]
                    path.tried = kinds.index(keep.kind) if keep and keep.kind in kinds else 0
                    path.reached, path.reached_via, path.since = None, None, None
                    lines += await self._try(key, path)
        await self._set(lines)
        self._report()

    async def _peer_lines(self, key: bytes, admission: Admission, path: Path) -> list[str]:
        lines = [f"public_key={key.hex()}", "replace_allowed_ips=true"]
        if admission.mode != "tap":
            lines += [f"allowed_ip={n}" for n in admission.networks()]
        if path.current is not None:
            lines.append(f"endpoint={await self._via(path, path.current)}")
            path.tried_at = clock.now()
        # Last: turning it on sends the first handshake at once (reconfig.py).
        lines.append(f"persistent_keepalive_interval={KEEPALIVE}")
        return lines

    async def _try(self, key: bytes, path: Path) -> list[str]:
        """Lines that make the path's current candidate the peer's endpoint and
        send a handshake there now, rather than at WireGuard's next retry (up to
        REKEY_TIMEOUT away, by when the next candidate would be up): persistent
        keepalive turned off and on again announces at once (core/reconfig.py),
        unless a handshake went out too recently."""
        assert path.current is not None
        path.tried_at = clock.now()
        via = await self._via(path, path.current)
        peer = [f"public_key={key.hex()}", "update_only=true"]
        return [
            *peer, f"endpoint={via}", "persistent_keepalive_interval=0",
            *peer, f"persistent_keepalive_interval={KEEPALIVE}",
        ]  # fmt: skip

    async def _via(self, path: Path, candidate: Candidate) -> str:
        """WireGuard's endpoint for the peer at `candidate`: the candidate itself,
        or for this host's own relayed address, the relay's local port for the peer."""
        relay = self.relay
        via = candidate.endpoint
        if relay is not None and candidate == self._own_relayed(relay):
            permit = self._relay_peer(path.member)
            assert permit is not None  # ranked() offers the relay only then
            via = format_address(await relay.port_for(permit))
        path.vias[via] = candidate
        return via

    async def _set(self, lines: list[str]) -> None:
        if not lines:
            return
        async with self.tunnel.setting:
            reply = await set_request(self.tunnel, lines)
        if reply.strip() != "errno=0":
            log.warning("%s: fleet: the change was refused: %s", self.tunnel.name, reply.strip())

    def _own_revoked(self) -> bool:
        return any(r.outranks(self.own) for r in self.roster.revocations.values())

    def ranked(self, member: Member) -> list[Candidate]:
        """A peer's candidates, best first, each endpoint once: an address on a
        network this host is on (the same LAN, or behind the same NAT), then its
        public mapping, then the pair's relay (see the module's doc), then its
        other addresses. The relay before those: it works wherever there is one,
        and a direct path that answers later takes over (probe_direct), where a
        wrong guess costs every pair behind NATs REKEY_TIMEOUT more to meet."""
        candidates: Sequence[Candidate] = member.candidates
        relay = self.relay
        theirs = any(c.kind == "relayed" for c in candidates)
        owner = not theirs or self.own.public_key < member.admission.public_key
        if relay is not None and owner and self._relay_peer(member) is not None:
            direct = [c for c in candidates if c.kind != "relayed"]
            candidates = [*direct, self._own_relayed(relay)]

        def rank(c: Candidate) -> int:
            if c.kind == "local":
                host = ipaddress.ip_address(split_address(c.endpoint)[0])
                return 0 if any(host in n for n in self.networks) else 3
            return {"mapped": 1, "relayed": 2}[c.kind]

        best = {}
        for c in sorted(candidates, key=rank):
            best.setdefault(c.endpoint, c)
        return list(best.values())

    async def _open_relay(self, path: Path) -> None:
        """A peer that may come through this host's relay gets its local port, and
        with it permission on the allocation, now: the peer sends to the relayed
        address when it comes to it, whatever this host tries meanwhile (and
        WireGuard answers it at the port it came from)."""
        relay = self.relay
        if relay is not None and self._own_relayed(relay) in path.order:
            await self._via(path, self._own_relayed(relay))

    @staticmethod
    def _own_relayed(relay: TurnRelay) -> Candidate:
        return Candidate("relayed", format_address(relay.relayed_address))

    @staticmethod
    def _relay_peer(member: Member) -> Address | None:
        """Where this host's relay sends to reach the peer: its public mapping, else
        its first own address (a host on the internet itself); None: offline."""
        ordered = sorted(member.candidates, key=lambda c: {"mapped": 0, "local": 1}.get(c.kind, 2))
        if not ordered or ordered[0].kind == "relayed":
            return None
        return split_address(ordered[0].endpoint)

    # Endpoints, published.

    async def publish(self) -> None:
        lease: int | None = None
        backoff = 0.5
        while True:
            try:
                candidates = await self.candidates()
                if self.relay is not self._relay_seen:
                    self._relay_seen = self.relay
                    await self.apply(rerank=True)
                if lease is None or not await asyncio.to_thread(self.registry.keep_alive, lease):
                    lease = await asyncio.to_thread(self.registry.grant, LEASE_TTL)
                    self.published = []
                if candidates != self.published:
                    value = encode_candidates(candidates)
                    key = self.layout.endpoints(self.own.name)
                    await asyncio.to_thread(self.registry.put, key, value, lease)
                    self.published = candidates
                    log.info("%s: fleet: endpoints %s", self.tunnel.name,
                             " ".join(c.endpoint for c in candidates) or "none")  # fmt: skip
                backoff = 0.5
                await asyncio.sleep(KEEP_ALIVE)
            except RegistryError as e:
                self.down(str(e))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def candidates(self) -> list[Candidate]:
        found: list[Candidate] = []
        addresses = await asyncio.to_thread(netlink.host_addresses, self.tunnel.name)
        self.networks = [a.network for a in addresses]
        for provider in self.providers:
            try:
                found += await provider.candidates(self.tunnel)
            except (OSError, netlink.LinkError) as e:
                log.warning("%s: fleet: %s: %s", self.tunnel.name, type(provider).__name__, e)
        return found[: roster_module.MAX_CANDIDATES]

    # Paths, tried.

    async def follow_paths(self) -> None:
        while True:
            await asyncio.sleep(PATH_TICK)
            await self.step_paths()

    async def step_paths(self) -> None:
        self.tunnel.plane.refresh()
        now, wall = time.monotonic(), time.time()
        lines: list[str] = []
        for key, path in self.paths.items():
            peer = self.tunnel.iface.peers.get(key)
            if peer is None:
                continue
            shook = peer.last_handshake_wall
            if shook is not None and wall - shook < 180 and peer.endpoint is not None:
                endpoint = format_address(peer.endpoint)
                if path.reached_via != endpoint:
                    known = path.vias.get(endpoint) or next(
                        (c for c in path.order if c.endpoint == endpoint), None
                    )
                    # Roamed to where the peer wrote from: direct, at no published address.
                    # A session that moves to another path has done so now.
                    since = shook if path.reached is None else wall
                    path.reached = known or Candidate("local", endpoint)
                    path.reached_via, path.since = endpoint, since
                if path.reached.kind == "relayed" and now - path.probed_at >= DIRECT_RETRY:
                    path.probed_at = now
                    task = asyncio.create_task(self.probe_direct(key, path))
                    self._probes.add(task)
                    task.add_done_callback(self._probes.discard)
                continue
            path.reached, path.reached_via, path.since = None, None, None
            if clock.now() - peer.last_initiation_consumed < 2 * REKEY_TIMEOUT:
                # The peer's initiation came in, and WireGuard answers where it came
                # from: the session is being made there, whatever candidate is tried.
                continue
            if len(path.order) > 1 and self._tried_enough(peer.last_initiation_sent, path):
                path.tried = (path.tried + 1) % len(path.order)
                lines += await self._try(key, path)
        await self._set(lines)
        self._report()

    @staticmethod
    def _tried_enough(sent: float, path: Path) -> bool:
        """Whether the current candidate has had its initiation and its time to
        answer it (or twice REKEY_TIMEOUT, whatever went out)."""
        at = clock.now()
        if sent >= path.tried_at and at - sent >= REKEY_TIMEOUT - SWITCH_AHEAD:
            return True
        return at - path.tried_at >= 2 * REKEY_TIMEOUT

    async def probe_direct(self, key: bytes, path: Path) -> None:
        """Ask a relayed peer's direct candidates whether they answer; the best
        that does becomes the peer's endpoint."""
        direct = [c for c in path.order if c.kind != "relayed"]

        async def answers(c: Candidate) -> bool:
            try:
                await self.stun.mapped_address(split_address(c.endpoint), PROBE_RETRANSMISSIONS)
            except (StunError, ValueError):
                return False
            return True

        found = await asyncio.gather(*map(answers, direct))
        best = next((c for c, ok in zip(direct, found, strict=True) if ok), None)
        if best is None or self.paths.get(key) is not path or best not in path.order:
            return
        log.info("%s: fleet: %s answers at %s: direct again", self.tunnel.name,
                 path.member.admission.name, best.endpoint)  # fmt: skip
        path.tried = path.order.index(best)
        await self._set(await self._try(key, path))

    # What `pyvpn show` says.

    def _report(self) -> None:
        self.tunnel.notes["fleet"] = {
            "host": self.own.name,
            "address": str(self.own.address),
            "prefix": self.settings.prefix,
            "registry_down_since": self.registry_down_since,
            "refused": dict(self.roster.refused),
            "endpoints": [c.endpoint for c in self.published],
        }
        self.tunnel.peer_notes.clear()
        for key, path in self.paths.items():
            reached = path.reached
            self.tunnel.peer_notes[key] = {
                "fleet": {
                    "host": path.member.admission.name,
                    "path": None if reached is None else PATH_NAMES[reached.kind],
                    "endpoint": None if reached is None else reached.endpoint,
                    "since": path.since,
                }
            }


PATH_NAMES = {"local": "direct local", "mapped": "direct mapped", "relayed": "relayed"}


def _ended(task: asyncio.Task[None]) -> None:
    """An agent ends only when cancelled; anything else is a bug, said loudly."""
    if not task.cancelled() and task.exception() is not None:
        log.error("fleet: the agent stopped", exc_info=task.exception())


@contextlib.asynccontextmanager
async def running(agent: Agent) -> Any:
    """The agent's loops while inside; cancelled on leaving."""
    task = asyncio.create_task(agent.run())
    task.add_done_callback(_ended)
    try:
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
