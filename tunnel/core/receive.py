"""Datagrams from the UDP socket (the kernel's receive.c): the DoS checks before
any public-key work, the three handshake messages, and transport messages, whose
plaintext is checked against its peer and delivered into the device."""

from tunnel.protocol import messages
from tunnel.protocol.address import Address
from tunnel.protocol.constants import (
    ETHERNET_HEADER_SIZE,
    INITIATIONS_PER_SECOND,
    KEEPALIVE_SIZE,
    KEEPALIVE_TIMEOUT,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    TRANSPORT_HEADER_SIZE,
    UNDER_LOAD_HOLD,
    UNDER_LOAD_REKEY_MARGIN,
)
from tunnel.protocol.crypto import DecryptError
from tunnel.protocol.keypair import Keypair
from tunnel.protocol.messages import (
    TRANSPORT_FIELDS,
    CookieReply,
    Initiation,
    MessageError,
    Response,
    Transport,
)
from tunnel.protocol.noise import (
    HandshakeError,
    HandshakeState,
    accept_initiation,
    consume_initiation,
)
from tunnel.protocol.peer import Peer
from tunnel.protocol.ratelimiter import source_key

from .actions import Action, DeliverBatch, KeypairInstalled, Send
from .l2 import Learned
from .l3 import parse_ip
from .send import Sending
from .state import log, short


class Receiving(Sending):
    def receive_datagram(self, data: bytes, source: Address, now: float) -> list[Action]:
        return self.receive_datagrams([(data, source)], now)

    def receive_datagrams(self, datagrams: list[tuple[bytes, Address]], now: float) -> list[Action]:
        """Datagrams read from the socket in one go, in order. Transport messages
        are opened and checked one by one; those of a run (up to a message of
        another kind) are delivered in one action, and each peer's timers and
        counters move once for the run: everything happens at `now`, so once is
        the same as once per message."""
        head = messages.header(MESSAGE_TRANSPORT, self.l2)
        actions: list[Action] = []
        delivered: list[bytes] = []
        # Per peer: the last source, the bytes, the data messages of the run.
        received: dict[Peer, list] = {}
        # Allowed-IPs lookups (tun) and MACs learned (tap) in this batch, by
        # source: a batch is mostly one flow, and the tables hold still for it.
        sources: dict = {}
        for data, source in datagrams:
            # With an external transport the core's keys are erased: its
            # transport messages are the transport's alone.
            if data[:4] != head or len(data) < KEEPALIVE_SIZE or self.external_transport:
                actions += self._end_run(delivered, received, now)
                actions += self._receive_message(data, source, now)
                continue
            receiver, counter = TRANSPORT_FIELDS.unpack_from(data, 4)
            entry = self.indices.get(receiver)
            if entry is None or entry[1] is None:
                self.drops["unknown_index"] += 1
                continue
            peer, keypair = entry
            plaintext = keypair.open(counter, memoryview(data)[TRANSPORT_HEADER_SIZE:], now)
            if plaintext is None:
                peer.drops.replay_or_forged += 1
                continue
            if keypair is peer.next:
                actions += self._end_run(delivered, received, now)
                actions += self.confirmed(peer, keypair.local_index, now)
            tally = received.get(peer)
            if tally is None:
                tally = received[peer] = [source, 0, 0]
            tally[0] = source
            tally[1] += len(data)
            if not plaintext:
                continue  # a keepalive
            tally[2] += 1
            packet = self._inbound(peer, plaintext, now, sources)
            if packet is not None:
                delivered.append(packet)
        return actions + self._end_run(delivered, received, now)

    def _end_run(
        self, delivered: list[bytes], received: dict[Peer, list], now: float
    ) -> list[Action]:
        """What a run of transport messages comes to; empties both."""
        actions: list[Action] = []
        for peer, (source, size, data_messages) in received.items():
            actions += self.transport_received(peer, source, size, data_messages, now)
        received.clear()
        if delivered:
            actions.append(DeliverBatch(delivered.copy()))
            delivered.clear()
        return actions

    def _inbound(self, peer: Peer, plaintext: bytes, now: float, sources: dict) -> bytes | None:
        """What of an authenticated packet or frame from the peer goes into the
        device: None if its source is not the peer's to use."""
        if self.l2:
            if len(plaintext) < ETHERNET_HEADER_SIZE:
                peer.drops.not_ip += 1
                return None
            mac = plaintext[6:12]
            if sources.get(mac) is peer:
                return plaintext
            if peer.allowed_macs and mac not in peer.allowed_macs:
                peer.drops.bad_source += 1  # outside its allowed MACs
                return None
            learned = self.macs.learn(mac, peer, now)
            if learned is Learned.HELD_BY_OTHER:
                peer.drops.bad_source += 1
                self.mac_conflict(peer, now)
                return None
            if learned is Learned.TABLE_FULL:
                self.drops["mac_table_full"] += 1
            else:
                sources[mac] = peer
            return plaintext
        header = parse_ip(plaintext)
        if header is None:
            peer.drops.not_ip += 1
            return None
        version, source, _, length = header
        owner = sources.get(source, sources)  # (None is an answer: no peer's)
        if owner is sources:
            owner = sources[source] = self.routes.lookup(version, source)
        if owner is not peer:
            peer.drops.bad_source += 1
            return None
        return plaintext[:length]

    def _receive_message(self, data: bytes, source: Address, now: float) -> list[Action]:
        try:
            msg = messages.parse(data)
        except MessageError:
            self.drops["malformed"] += 1
            return []
        if isinstance(msg, Transport):
            # Turned away by receive_datagrams: of the other mode, or for an
            # external transport.
            self.drops["unknown_index"] += 1
            return []
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
        rekeys = len(self.peers) / REKEY_AFTER_TIME  # handshakes a second
        if self._load_count > max(self.under_load_threshold, UNDER_LOAD_REKEY_MARGIN * rekeys):
            self.under_load_until = now + UNDER_LOAD_HOLD
        return now < self.under_load_until

    def _static_static(self, remote_static: bytes) -> bytes | None:
        peer = self.peers.get(remote_static)
        return peer.handshake.precomputed_static_static if peer is not None else None

    def _receive_initiation(
        self, msg: Initiation, data: bytes, source: Address, now: float
    ) -> list[Action]:
        rejected = self._handshake_admitted(
            data, messages.INITIATION_MAC1_OFFSET, msg.sender, msg.l2, source, now
        )
        if rejected is not None:
            return rejected
        if not self.identity.present:
            self.drops["no_private_key"] += 1
            return []
        try:
            consumed = consume_initiation(self.identity, msg, self._static_static)
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
        # Both ends initiating at once: ours stays in flight beside the answer.
        crossed = peer.handshake.state is HandshakeState.CREATED_INITIATION
        handshake = peer.handshake.for_answer() if crossed else peer.handshake
        try:
            accept_initiation(handshake, consumed)
        except HandshakeError:
            self.drops["replayed_initiation"] += 1
            return []
        peer.handshake.latest_timestamp = handshake.latest_timestamp
        peer.last_initiation_consumed = now
        self._authenticated(peer, len(data), source, now)
        log.debug(
            "peer %s: initiation received%s", short(peer), ", ours in flight" if crossed else ""
        )
        if not crossed:
            self._drop_handshake_index(peer)
        index = self._new_index(peer, None)
        response = handshake.create_response(index, self._ephemeral(), self.l2)
        packed = peer.cookies.add_macs(response.pack(), now)
        self._count_tx(peer, len(packed), now)
        peer.last_handshake_sent = now
        if msg.l2 != self.l2:
            # Answer anyway so the initiator can authenticate us and report it too,
            # but derive no keys: frames of one mode are garbage to the other.
            self._report_mismatch(peer, msg.l2, now)
            del self.indices[index]
            handshake.zero()
            return [Send(source, packed)]
        keypair = Keypair(handshake.derive_session(), now)
        self._install(peer, keypair)
        peer.timers.session_derived(now)
        log.debug("peer %s: response sent, session %d derived", short(peer), index)
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
        log.debug("peer %s: response received, session %d made", short(peer), msg.receiver)
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
            return []
        log.debug("peer %s: cookie reply received (it is under load)", short(entry[0]))
        # The retransmit timer resends the initiation, now with a mac2.
        return []

    # Transport events: from the path above, or reported by an external transport.

    def confirmed(self, peer: Peer, local_index: int, now: float) -> list[Action]:
        """The first transport message on `next` arrived: the responder's session
        is confirmed (whitepaper 5.4.5) and staged packets may go."""
        keypair = peer.next
        if keypair is None or keypair.local_index != local_index:
            return []
        self._retire(peer.confirm(keypair))
        return self.session_confirmed(peer, now)

    def session_confirmed(self, peer: Peer, now: float) -> list[Action]:
        """The responder's new session is confirmed: the handshake is complete
        and staged packets may go. An external transport that confirms keypairs
        itself says so here, after adopt()."""
        self._handshake_complete(peer, now)
        log.debug("peer %s: session confirmed by its first message", short(peer))
        return self._flush_staged(peer, now)

    def transport_received(
        self, peer: Peer, source: Address, size: int, data_messages: int, now: float
    ) -> list[Action]:
        """Authenticated transport bytes arrived from the peer, `data_messages`
        of them not keepalives."""
        self._authenticated(peer, size, source, now)
        # A second data message may note that another keepalive is due; more
        # change nothing (timers.c wg_timers_data_received).
        for _ in range(min(data_messages, 2)):
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
