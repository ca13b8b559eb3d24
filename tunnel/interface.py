"""The sans-IO WireGuard interface (device.c, send.c, receive.c in one state
machine): datagrams, device packets and clock ticks go in, actions come out.
It never touches a socket or a clock, so every path is a unit test."""

import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from . import icmp, messages
from .allowed_ips import AllowedIPs
from .constants import (
    DEFAULT_MTU,
    ICMP_ERRORS_BURST,
    ICMP_ERRORS_PER_SECOND,
    INITIATIONS_PER_SECOND,
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    UNDER_LOAD_INITIATIONS_PER_SECOND,
)
from .cookie import Address, CookieChecker
from .crypto import DecryptError
from .keypair import Keypair, pad
from .keys import encode
from .messages import CookieReply, Initiation, MessageError, Response, Transport
from .noise import HandshakeError, StaticIdentity, accept_initiation, consume_initiation
from .packet import ETHERNET_HEADER, is_group_mac, parse_ip
from .peer import Peer, PeerConfig
from .pmtu import too_big_reply
from .ratelimiter import RateLimiter, source_key
from .switch import DEFAULT_AGEING, MacTable, Switch
from .tai64n import tai64n
from .timers import Timer

log = logging.getLogger("pyvpn")

MISMATCH_REPORT_INTERVAL = 60.0


@dataclass(frozen=True)
class Send:
    """Send a datagram on the UDP socket."""

    destination: Address
    data: bytes


@dataclass(frozen=True)
class Deliver:
    """Write a packet (tun) or frame (tap) into the device."""

    packet: bytes


@dataclass(frozen=True)
class Transmit:
    """Encrypt and send a packet (empty: a keepalive) with the peer's current
    keypair. Only with an external transport, which owns the send counters."""

    peer: Peer
    packet: bytes


@dataclass(frozen=True)
class KeypairInstalled:
    """A handshake produced a keypair; an external transport must install it with
    the same slot shuffle (Peer.install)."""

    peer: Peer
    keypair: Keypair


@dataclass(frozen=True)
class KeypairsCleared:
    """Every keypair of the peer is gone (key material zeroed)."""

    peer: Peer


Action = Send | Deliver | Transmit | KeypairInstalled | KeypairsCleared


def mode_name(l2: bool) -> str:
    return "tap" if l2 else "tun"


class Interface:
    def __init__(
        self,
        private_key: bytes,
        *,
        l2: bool = False,
        mtu: int = DEFAULT_MTU,
        randbytes: Callable[[int], bytes] = os.urandom,
        wall_offset: float = 0.0,
        mac_ageing: float = DEFAULT_AGEING,
        under_load_threshold: int = UNDER_LOAD_INITIATIONS_PER_SECOND,
        external_transport: bool = False,
    ) -> None:
        self.identity = StaticIdentity(private_key)
        # With an external transport (the native plane) transport messages never
        # pass through here: this core must then never encrypt, or two counters
        # would use the same nonces.
        self.external_transport = external_transport
        self.l2 = l2
        self.mtu = mtu
        self.randbytes = randbytes
        # Monotonic time + wall_offset = Unix time, for TAI64N and "latest handshake".
        self.wall_offset = wall_offset
        self.cookie_checker = CookieChecker(self.identity.public_key, randbytes)
        self.peers: dict[bytes, Peer] = {}
        self.indices: dict[int, tuple[Peer, Keypair | None]] = {}
        self.routes: AllowedIPs[Peer] = AllowedIPs()
        self.macs: Switch[Peer] = MacTable(mac_ageing)
        self.limiter = RateLimiter()
        self.icmp_limiter = RateLimiter(ICMP_ERRORS_PER_SECOND, ICMP_ERRORS_BURST)  # one bucket
        self.under_load_threshold = under_load_threshold
        self.under_load_until = float("-inf")
        self._load_second = 0
        self._load_count = 0
        self.drops: Counter[str] = Counter()
        self.cookie_replies_sent = 0

    # Configuration.

    def add_peer(self, config: PeerConfig) -> Peer:
        if config.public_key in self.peers:
            raise ValueError("peer already exists")
        peer = Peer(self.identity, config)
        self.peers[config.public_key] = peer
        for network in config.allowed_ips:
            self.routes.insert(network, peer)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key)
        self.routes.remove_owner(peer)
        self.macs.forget_owner(peer)
        self._forget_indices(peer)

    def set_private_key(self, private_key: bytes) -> list[Action]:
        """A new identity (device.go SetPrivateKey): sessions made under the old one
        are dropped, so the next packet handshakes with the new key."""
        self.identity = StaticIdentity(private_key)
        self.cookie_checker = CookieChecker(self.identity.public_key, self.randbytes)
        actions: list[Action] = []
        for peer in self.peers.values():
            self._drop_handshake_index(peer)
            peer.rekey_identity(self.identity)
            self._retire(peer.clear_keypairs())
            actions.append(KeypairsCleared(peer))
        return actions

    def start(self, now: float) -> list[Action]:
        """Peers with a persistent keepalive announce themselves at once, as wg does."""
        actions: list[Action] = []
        for peer in self.peers.values():
            actions += self.announce(peer, now)
        return actions

    def announce(self, peer: Peer, now: float) -> list[Action]:
        """A keepalive now if the peer has a persistent keepalive and an endpoint."""
        if peer.persistent_keepalive and peer.endpoint:
            return self._keepalive(peer, now)
        return []

    # Input from the UDP socket.

    def receive_datagram(self, data: bytes, source: Address, now: float) -> list[Action]:
        try:
            msg = messages.parse(data)
        except MessageError:
            self.drops["malformed"] += 1
            return []
        if isinstance(msg, Transport):
            return self._receive_transport(msg, data, source, now)
        if isinstance(msg, Initiation):
            return self._receive_initiation(msg, data, source, now)
        if isinstance(msg, Response):
            return self._receive_response(msg, data, source, now)
        return self._receive_cookie_reply(msg, now)

    def _handshake_admitted(
        self, data: bytes, mac1_offset: int, sender: int, l2: bool, source: Address, now: float
    ) -> list[Action] | None:
        """DoS checks before any public-key work (whitepaper 5.3): None lets the
        message through, a list (maybe holding a cookie reply) rejects it."""
        if not self.cookie_checker.mac1_valid(data, mac1_offset):
            self.drops["bad_mac1"] += 1
            return []
        if not self._under_load(now):
            return None
        if not self.cookie_checker.mac2_valid(data, mac1_offset, source, now):
            # Not rate limited, as in cookie.c: the source is unproven, so a
            # spoofer could otherwise spend a real peer's share and keep it from
            # ever getting the cookie it needs.
            self.cookie_replies_sent += 1
            reply = self.cookie_checker.create_reply(data, mac1_offset, sender, source, now, l2)
            return [Send(source, reply.pack())]
        # mac2 proves the source, so only now is its share counted.
        if not self.limiter.allow(source_key(source[0]), now):
            self.drops["ratelimited"] += 1
            return []
        return None

    def _under_load(self, now: float) -> bool:
        second = int(now)
        if second != self._load_second:
            self._load_second, self._load_count = second, 0
        self._load_count += 1
        if self._load_count > self.under_load_threshold:
            # Stay under load a second past the flood, as wireguard-go does.
            self.under_load_until = now + 1.0
        return now < self.under_load_until

    def _receive_initiation(
        self, msg: Initiation, data: bytes, source: Address, now: float
    ) -> list[Action]:
        rejected = self._handshake_admitted(
            data, messages.INITIATION_MAC1_OFFSET, msg.sender, msg.l2, source, now
        )
        if rejected is not None:
            return rejected
        try:
            consumed = consume_initiation(self.identity, msg)
        except HandshakeError:
            self.drops["bad_handshake"] += 1
            return []
        peer = self.peers.get(consumed.remote_static)
        if peer is None:
            self.drops["unknown_peer"] += 1
            return []
        if now - peer.last_initiation_consumed < 1 / INITIATIONS_PER_SECOND:
            self.drops["handshake_flood"] += 1
            return []
        try:
            accept_initiation(peer.handshake, consumed)
        except HandshakeError:
            self.drops["replayed_initiation"] += 1
            return []
        peer.last_initiation_consumed = now
        self._authenticated(peer, len(data), source, now)
        self._drop_handshake_index(peer)
        index = self._new_index(peer, None)
        response = peer.handshake.create_response(index, self._ephemeral(), self.l2)
        packed = peer.cookies.add_macs(response.pack(), now)
        self._count_tx(peer, len(packed), now)
        if msg.l2 != self.l2:
            # Answer anyway so the initiator can authenticate us and report it too,
            # but derive no keys: frames of one mode are garbage to the other.
            self._report_mismatch(peer, msg.l2, now)
            del self.indices[index]
            peer.handshake.zero()
            return [Send(source, packed)]
        keypair = Keypair(peer.handshake.derive_session(), now)
        self._install(peer, keypair)
        peer.timers.session_derived(now)
        return [Send(source, packed), KeypairInstalled(peer, keypair)]

    def _receive_response(
        self, msg: Response, data: bytes, source: Address, now: float
    ) -> list[Action]:
        rejected = self._handshake_admitted(
            data, messages.RESPONSE_MAC1_OFFSET, msg.sender, msg.l2, source, now
        )
        if rejected is not None:
            return rejected
        entry = self.indices.get(msg.receiver)
        if entry is None or entry[1] is not None:
            self.drops["unknown_index"] += 1
            return []
        peer = entry[0]
        try:
            peer.handshake.consume_response(msg)
        except HandshakeError:
            self.drops["bad_handshake"] += 1
            return []
        self._authenticated(peer, len(data), source, now)
        if msg.l2 != self.l2:
            self._report_mismatch(peer, msg.l2, now)
            self._drop_handshake_index(peer)
            peer.handshake.zero()
            peer.timers.handshake_complete()
            return []
        keypair = Keypair(peer.handshake.derive_session(), now)
        self._install(peer, keypair)
        self._handshake_complete(peer, now)
        peer.timers.session_derived(now)
        actions: list[Action] = [KeypairInstalled(peer, keypair)]
        # The responder cannot send until it hears from us on the new keys.
        if not peer.staged:
            peer.staged.append(b"")
        return actions + self._flush_staged(peer, now)

    def _receive_cookie_reply(self, msg: CookieReply, now: float) -> list[Action]:
        entry = self.indices.get(msg.receiver)
        if entry is None:
            self.drops["unknown_index"] += 1
            return []
        try:
            entry[0].cookies.consume_reply(msg, now)
        except DecryptError:
            self.drops["bad_cookie"] += 1
        # The retransmit timer resends the initiation, now with a mac2.
        return []

    def _receive_transport(
        self, msg: Transport, data: bytes, source: Address, now: float
    ) -> list[Action]:
        entry = self.indices.get(msg.receiver)
        if entry is None or entry[1] is None or msg.l2 != self.l2:
            self.drops["unknown_index"] += 1
            return []
        peer, keypair = entry
        plaintext = keypair.decrypt(msg, now)
        if plaintext is None:
            peer.drops.replay_or_forged += 1
            return []
        actions: list[Action] = []
        if keypair is peer.next:
            actions += self.confirmed(peer, keypair.local_index, now)
        actions += self.transport_received(peer, source, len(data), bool(plaintext), now)
        if not plaintext:
            return actions  # a keepalive
        if self.l2:
            if len(plaintext) < ETHERNET_HEADER:
                peer.drops.not_ip += 1
                return actions
            self.macs.learn(plaintext[6:12], peer, now)
            return [*actions, Deliver(plaintext)]
        header = parse_ip(plaintext)
        if header is None:
            peer.drops.not_ip += 1
            return actions
        if self.routes.lookup(header.version, header.source) is not peer:
            peer.drops.bad_source += 1
            return actions
        return [*actions, Deliver(plaintext[: header.length])]

    # Transport events: from the path above, or reported by an external transport.

    def confirmed(self, peer: Peer, local_index: int, now: float) -> list[Action]:
        """The first transport message on `next` arrived: the responder's session
        is confirmed (whitepaper 5.4.5) and staged packets may go."""
        keypair = peer.next
        if keypair is None or keypair.local_index != local_index:
            return []
        self._retire(peer.confirm(keypair))
        self._handshake_complete(peer, now)
        return self._flush_staged(peer, now)

    def transport_received(
        self, peer: Peer, source: Address, size: int, is_data: bool, now: float
    ) -> list[Action]:
        """Authenticated transport bytes arrived from the peer."""
        self._authenticated(peer, size, source, now)
        if is_data:
            peer.timers.data_received(now)
        current = peer.current
        # Receiving-side freshness (timers.c keep_key_fresh): the initiator rekeys
        # before the responder has to reject the session.
        if (
            current is not None
            and current.keys.is_initiator
            and now - current.created > REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
        ):
            return self._initiate(peer, now, retry=False)
        return []

    def transport_sent(self, peer: Peer, size: int, is_data: bool, now: float) -> list[Action]:
        """Transport bytes went to the peer; sending data may call for a rekey."""
        self._count_tx(peer, size, now)
        peer.timers.any_authenticated_sent()
        if not is_data:
            return []
        peer.timers.data_sent(now)
        return self._initiate(peer, now, retry=False) if peer.needs_rekey(now) else []

    def unreachable(self, packet: bytes, now: float) -> list[Action]:
        """tun: the ICMP error for a packet no peer's allowed IPs cover (tunnel/icmp.py),
        at most ICMP_ERRORS_PER_SECOND of them, as Linux limits its own."""
        reply = icmp.unreachable(packet)
        if reply is None or not self.icmp_limiter.allow("", now):
            return []
        return [Deliver(reply)]

    def stage(self, peer: Peer, packet: bytes, now: float) -> list[Action]:
        """Queue a packet for the peer and send what can be sent."""
        if len(peer.staged) == peer.staged.maxlen:
            peer.drops.staged_overflow += 1
        peer.staged.append(packet)
        return self._flush_staged(peer, now)

    # Input from the device.

    def send_packet(self, packet: bytes, now: float) -> list[Action]:
        if self.l2:
            if len(packet) < ETHERNET_HEADER:
                self.drops["runt_frame"] += 1
                return []
            if len(packet) - ETHERNET_HEADER > self.mtu:
                # Answer as a router would (tunnel/pmtu.py); what gets no answer
                # goes anyway, and the underlay fragments the outer datagram.
                reply = too_big_reply(packet, self.mtu)
                if reply is not None:
                    self.drops["frame_too_big"] += 1
                    return [Deliver(reply)]
            destination = packet[:6]
            owner = None if is_group_mac(destination) else self.macs.lookup(destination, now)
            # Split horizon: a frame from a MAC learned behind a peer came from it (a
            # bridge port in hairpin mode relays it back); it must not return there.
            source = self.macs.lookup(packet[6:12], now)
            targets = [p for p in ([owner] if owner else self.peers.values()) if p is not source]
        else:
            header = parse_ip(packet)
            owner = header and self.routes.lookup(header.version, header.destination)
            if not owner:
                self.drops["no_route"] += 1
                return self.unreachable(packet, now)
            targets = [owner]
        actions: list[Action] = []
        for peer in targets:
            actions += self.stage(peer, packet, now)
        return actions

    # Clock ticks.

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for peer in list(self.peers.values()):
            for timer in peer.timers.expired(now):
                actions += self._timer_fired(peer, timer, now)
        return actions

    def _timer_fired(self, peer: Peer, timer: Timer, now: float) -> list[Action]:
        if timer is Timer.RETRANSMIT_HANDSHAKE:
            if peer.timers.handshake_attempts >= MAX_TIMER_HANDSHAKES:
                log.info(
                    "peer %s: handshake did not complete after %d attempts, giving up",
                    short(peer),
                    peer.timers.handshake_attempts + 1,
                )
                peer.staged.clear()
                if not peer.timers.pending(Timer.ZERO_KEY_MATERIAL):
                    peer.timers.session_derived(now)
                return []
            peer.timers.handshake_attempts += 1
            return self._initiate(peer, now, retry=True)
        if timer is Timer.SEND_KEEPALIVE:
            actions = self._keepalive(peer, now)
            if peer.timers.need_another_keepalive:
                peer.timers.need_another_keepalive = False
                peer.timers.data_received(now)
            return actions
        if timer is Timer.NEW_HANDSHAKE:
            log.info(
                "peer %s: no reply for %.0f s, handshaking again",
                short(peer),
                KEEPALIVE_TIMEOUT + REKEY_TIMEOUT,
            )
            return self._initiate(peer, now, retry=False)
        if timer is Timer.ZERO_KEY_MATERIAL:
            self._retire(peer.clear_keypairs())
            self._drop_handshake_index(peer)
            peer.handshake.zero()
            return [KeypairsCleared(peer)]
        return self._keepalive(peer, now)  # PERSISTENT_KEEPALIVE

    # Sending.

    def _flush_staged(self, peer: Peer, now: float) -> list[Action]:
        keypair = peer.current
        if keypair is None or keypair.expired(now) or peer.endpoint is None:
            return self._initiate(peer, now, retry=False)
        actions: list[Action] = []
        while peer.staged:
            packet = peer.staged.popleft()
            if self.external_transport:
                actions.append(Transmit(peer, packet))
                continue
            plaintext = packet if self.l2 else pad(packet, self.mtu)
            data = keypair.encrypt(plaintext, now, self.l2)
            actions.append(Send(peer.endpoint, data))
            actions += self.transport_sent(peer, len(data), bool(packet), now)
        return actions

    def _keepalive(self, peer: Peer, now: float) -> list[Action]:
        if not peer.staged:
            peer.staged.append(b"")
        return self._flush_staged(peer, now)

    def _initiate(self, peer: Peer, now: float, retry: bool) -> list[Action]:
        if peer.endpoint is None:
            return []
        if not retry:
            # One initiation in flight at a time (send.c wg_packet_send_handshake_initiation).
            if now - peer.last_initiation_sent < REKEY_TIMEOUT:
                return []
            peer.timers.handshake_attempts = 0
        self._drop_handshake_index(peer)
        index = self._new_index(peer, None)
        initiation = peer.handshake.create_initiation(
            index, self._ephemeral(), tai64n(now + self.wall_offset), self.l2
        )
        data = peer.cookies.add_macs(initiation.pack(), now)
        peer.last_initiation_sent = now
        jitter = int.from_bytes(self.randbytes(2), "little") / 65536 * REKEY_TIMEOUT_JITTER_MAX
        peer.timers.handshake_initiated(now, jitter)
        self._count_tx(peer, len(data), now)
        return [Send(peer.endpoint, data)]

    # Bookkeeping.

    def _authenticated(self, peer: Peer, size: int, source: Address, now: float) -> None:
        """Roaming (whitepaper 2.1): the last authenticated source is the endpoint."""
        if peer.endpoint != source:
            if peer.endpoint is not None:
                log.info("peer %s roamed to %s:%d", short(peer), *source)
            peer.endpoint = source
        peer.rx_bytes += size
        peer.timers.any_authenticated_received()
        peer.timers.any_authenticated_traversal(now)

    def _count_tx(self, peer: Peer, size: int, now: float) -> None:
        peer.tx_bytes += size
        peer.timers.any_authenticated_traversal(now)

    def _handshake_complete(self, peer: Peer, now: float) -> None:
        peer.timers.handshake_complete()
        peer.last_handshake_wall = now + self.wall_offset

    def _install(self, peer: Peer, keypair: Keypair) -> None:
        self.indices[keypair.local_index] = (peer, keypair)
        self._retire(peer.install(keypair))

    def _retire(self, keypairs: list[Keypair]) -> None:
        for keypair in keypairs:
            entry = self.indices.get(keypair.local_index)
            if entry is not None and entry[1] is keypair:
                del self.indices[keypair.local_index]

    def _drop_handshake_index(self, peer: Peer) -> None:
        entry = self.indices.get(peer.handshake.local_index)
        if entry is not None and entry[0] is peer and entry[1] is None:
            del self.indices[peer.handshake.local_index]

    def _forget_indices(self, peer: Peer) -> None:
        self.indices = {i: e for i, e in self.indices.items() if e[0] is not peer}

    def _new_index(self, peer: Peer, keypair: Keypair | None) -> int:
        while True:
            index = int.from_bytes(self.randbytes(4), "little")
            if index not in self.indices:
                self.indices[index] = (peer, keypair)
                return index

    def _ephemeral(self) -> bytes:
        return self.randbytes(32)

    def _report_mismatch(self, peer: Peer, remote_l2: bool, now: float) -> None:
        self.drops["mode_mismatch"] += 1
        if now - peer.mismatch_reported >= MISMATCH_REPORT_INTERVAL:
            peer.mismatch_reported = now
            log.warning(
                "peer %s is configured for %s mode but this interface is %s: "
                "no traffic can flow until both ends use the same mode",
                short(peer),
                mode_name(remote_l2),
                mode_name(self.l2),
            )


def short(peer: Peer) -> str:
    return encode(peer.public_key)[:8] + "…"
