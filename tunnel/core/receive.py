"""Datagrams from the UDP socket (the kernel's receive.c): the DoS checks before
any public-key work, the three handshake messages, and transport messages, whose
plaintext is checked against its peer and delivered into the device."""

from dataclasses import dataclass

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
    ConsumedInitiation,
    HandshakeError,
    HandshakeState,
    ResponseStart,
    accept_initiation,
    consume_initiation,
)
from tunnel.protocol.peer import Peer
from tunnel.protocol.ratelimiter import source_key

from .actions import Action, ConsumeInitiation, DeliverBatch, KeypairInstalled, Send
from .drops import Drop
from .l2 import Learned
from .l3 import parse_ip
from .send import flush_staged, initiate, transmit_staged
from .state import (
    State,
    authenticated,
    count_tx,
    drop_handshake_index,
    handshake_complete,
    install,
    log,
    mac_conflict,
    new_index,
    report_mismatch,
    retire,
    short,
)


@dataclass(slots=True)
class Tally:
    """What a run of transport messages from one peer comes to: its last source,
    the bytes, and how many were data (not keepalives)."""

    source: Address
    size: int = 0
    data_messages: int = 0


# Not looked up yet in this batch (None is an answer: no peer's).
UNSEEN = object()


@dataclass(slots=True)
class Sources:
    """What one batch has learned about the sources of its packets: a batch is
    mostly one flow, and the tables hold still for it."""

    owners: dict[bytes, object]  # tun: source address -> its owner (Peer or None)
    learned: dict[bytes, Peer]  # tap: MAC addresses learned behind a peer


def receive_datagrams(
    state: State, datagrams: list[tuple[bytes, Address]], now: float
) -> list[Action]:
    """Datagrams read from the socket in one go, in order. Transport messages
    are opened and checked one by one; those of a run (up to a message of
    another kind) are delivered in one action, and each peer's timers and
    counters move once for the run: everything happens at `now`, so once is
    the same as once per message."""
    head = messages.header(MESSAGE_TRANSPORT, state.l2)
    actions: list[Action] = []
    delivered: list[bytes] = []
    received: dict[Peer, Tally] = {}
    sources = Sources({}, {})
    for data, source in datagrams:
        # With an external transport the core's keys are erased: its
        # transport messages are the transport's alone.
        if data[:4] != head or len(data) < KEEPALIVE_SIZE or state.external_transport:
            actions += _end_run(state, delivered, received, now)
            actions += _receive_message(state, data, source, now)
            continue
        receiver, counter = TRANSPORT_FIELDS.unpack_from(data, 4)
        entry = state.indices.get(receiver)
        if entry is None or entry[1] is None:
            state.drops[Drop.UNKNOWN_INDEX] += 1
            continue
        peer, keypair = entry
        plaintext = keypair.open(counter, memoryview(data)[TRANSPORT_HEADER_SIZE:], now)
        if plaintext is None:
            peer.drops.replay_or_forged += 1
            continue
        if keypair is peer.next:
            actions += _end_run(state, delivered, received, now)
            actions += _confirmed(state, peer, keypair, now)
        tally = received.get(peer)
        if tally is None:
            tally = received[peer] = Tally(source)
        tally.source = source
        tally.size += len(data)
        if not plaintext:
            continue  # a keepalive
        tally.data_messages += 1
        packet = _inbound(state, peer, plaintext, now, sources)
        if packet is not None:
            delivered.append(packet)
    return actions + _end_run(state, delivered, received, now)


def _end_run(
    state: State, delivered: list[bytes], received: dict[Peer, Tally], now: float
) -> list[Action]:
    """What a run of transport messages comes to; empties both."""
    actions: list[Action] = []
    for peer, tally in received.items():
        actions += transport_received(
            state, peer, tally.source, tally.size, tally.data_messages, now
        )
    received.clear()
    if delivered:
        actions.append(DeliverBatch(delivered.copy()))
        delivered.clear()
    return actions


def _inbound(
    state: State, peer: Peer, plaintext: bytes, now: float, sources: Sources
) -> bytes | None:
    """What of an authenticated packet or frame from the peer goes into the
    device: None if its source is not the peer's to use."""
    if state.l2:
        if len(plaintext) < ETHERNET_HEADER_SIZE:
            peer.drops.not_ip += 1
            return None
        mac = plaintext[6:12]
        if sources.learned.get(mac) is peer:
            return plaintext
        if peer.allowed_macs and mac not in peer.allowed_macs:
            peer.drops.bad_source += 1  # outside its allowed MACs
            return None
        learned = state.macs.learn(mac, peer, now)
        if learned is Learned.HELD_BY_OTHER:
            peer.drops.bad_source += 1
            mac_conflict(peer, now)
            return None
        if learned is Learned.TABLE_FULL:
            state.drops[Drop.MAC_TABLE_FULL] += 1
        else:
            sources.learned[mac] = peer
        return plaintext
    header = parse_ip(plaintext)
    if header is None:
        peer.drops.not_ip += 1
        return None
    version, source, _, length = header
    owners = sources.owners
    owner = owners.get(source, UNSEEN)
    if owner is UNSEEN:
        owner = owners[source] = state.routes.lookup(version, source)
    if owner is not peer:
        peer.drops.bad_source += 1
        return None
    return plaintext[:length]


def _receive_message(state: State, data: bytes, source: Address, now: float) -> list[Action]:
    try:
        msg = messages.parse(data)
    except MessageError:
        state.drops[Drop.MALFORMED] += 1
        return []
    if isinstance(msg, Transport):
        # Turned away by receive_datagrams: of the other mode, or for an
        # external transport.
        state.drops[Drop.UNKNOWN_INDEX] += 1
        return []
    if isinstance(msg, Initiation):
        return _receive_initiation(state, msg, data, source, now)
    if isinstance(msg, Response):
        return _receive_response(state, msg, data, source, now)
    return _receive_cookie_reply(state, msg, now)


def _handshake_admitted(
    state: State, data: bytes, mac1_offset: int, sender: int, l2: bool, source: Address, now: float
) -> list[Action] | None:
    """DoS checks before any public-key work (whitepaper 5.3): None lets the
    message through, a list (maybe holding a cookie reply) rejects it."""
    if not state.cookie_checker.mac1_valid(data, mac1_offset):
        state.drops[Drop.BAD_MAC1] += 1
        return []
    if not _under_load(state, now):
        return None
    if not state.cookie_checker.mac2_valid(data, mac1_offset, source, now):
        # Not rate limited, as in cookie.c: the source is unproven, so a
        # spoofer could otherwise spend a real peer's share and keep it from
        # ever getting the cookie it needs.
        state.cookie_replies_sent += 1
        reply = state.cookie_checker.create_reply(data, mac1_offset, sender, source, now, l2)
        return [Send(source, reply.pack())]
    # mac2 proves the source, so only now is its share counted.
    if not state.limiter.allow(source_key(source[0]), now):
        state.drops[Drop.RATELIMITED] += 1
        return []
    return None


def _under_load(state: State, now: float) -> bool:
    second = int(now)
    if second != state.load_second:
        state.load_second, state.load_count = second, 0
    state.load_count += 1
    rekeys = len(state.peers) / REKEY_AFTER_TIME  # handshakes a second
    if state.load_count > max(state.under_load_threshold, UNDER_LOAD_REKEY_MARGIN * rekeys):
        state.under_load_until = now + UNDER_LOAD_HOLD
    return now < state.under_load_until


def _static_static(state: State, remote_static: bytes) -> bytes | None:
    peer = state.peers.get(remote_static)
    return peer.handshake.precomputed_static_static if peer is not None else None


def _initiation_admitted(
    state: State, msg: Initiation, data: bytes, source: Address, now: float, admitted: bool = False
) -> list[Action] | None:
    """The DoS checks, unless `admitted` passed them already, then whether we
    have a key to answer with: None lets the initiation through."""
    if not admitted:
        rejected = _handshake_admitted(
            state, data, messages.INITIATION_MAC1_OFFSET, msg.sender, msg.l2, source, now
        )
        if rejected is not None:
            return rejected
    if not state.identity.present:
        state.drops[Drop.NO_PRIVATE_KEY] += 1
        return []
    return None


def _receive_initiation(
    state: State, msg: Initiation, data: bytes, source: Address, now: float
) -> list[Action]:
    rejected = _initiation_admitted(state, msg, data, source, now)
    if rejected is not None:
        return rejected
    if state.external_handshakes:
        return [ConsumeInitiation(source, data)]
    try:
        consumed = consume_initiation(state.identity, msg, lambda key: _static_static(state, key))
    except HandshakeError:
        state.drops[Drop.BAD_HANDSHAKE] += 1
        return []
    return _initiation_consumed(state, msg, data, source, consumed, None, now)


def receive_consumed_initiation(
    state: State,
    data: bytes,
    source: Address,
    consumed: ConsumedInitiation | None,
    start: ResponseStart | None,
    admitted: bool,
    now: float,
) -> list[Action]:
    """An initiation an external handshake worker consumed, and the start of its
    response: the same checks and decisions as one consumed here. `admitted`: it
    passed the DoS checks already (it came back from ConsumeInitiation); otherwise
    the worker took it on its mac1 alone, so they come first, as for any other.
    `consumed` is None if it did not authenticate."""
    try:
        msg = messages.parse(data)
    except MessageError:
        state.drops[Drop.MALFORMED] += 1
        return []
    if not isinstance(msg, Initiation):
        state.drops[Drop.MALFORMED] += 1
        return []
    rejected = _initiation_admitted(state, msg, data, source, now, admitted)
    if rejected is not None:
        return rejected
    if consumed is None:
        state.drops[Drop.BAD_HANDSHAKE] += 1
        return []
    return _initiation_consumed(state, msg, data, source, consumed, start, now)


def _initiation_consumed(
    state: State,
    msg: Initiation,
    data: bytes,
    source: Address,
    consumed: ConsumedInitiation,
    start: ResponseStart | None,
    now: float,
) -> list[Action]:
    """The peer, the flood and replay checks, the index and the response, which
    `start` began if given."""
    peer = state.peers.get(consumed.remote_static)
    if peer is None:
        state.drops[Drop.UNKNOWN_PEER] += 1
        return []
    if now - peer.last_initiation_consumed < 1 / INITIATIONS_PER_SECOND:
        state.drops[Drop.HANDSHAKE_FLOOD] += 1
        return []
    # Both ends initiating at once: ours stays in flight beside the answer.
    crossed = peer.handshake.state is HandshakeState.CREATED_INITIATION
    handshake = peer.handshake.for_answer() if crossed else peer.handshake
    try:
        accept_initiation(handshake, consumed)
    except HandshakeError:
        state.drops[Drop.REPLAYED_INITIATION] += 1
        return []
    peer.handshake.latest_timestamp = handshake.latest_timestamp
    peer.last_initiation_consumed = now
    authenticated(peer, len(data), source, now)
    log.debug("peer %s: initiation received%s", short(peer), ", ours in flight" if crossed else "")
    if not crossed:
        drop_handshake_index(state, peer)
    index = new_index(state, peer, None)
    if start is None:
        response = handshake.create_response(index, state.randbytes(32), state.l2)
    else:
        response = handshake.finish_response(index, start, state.l2)
    packed = peer.cookies.add_macs(response.pack(), now)
    count_tx(peer, len(packed), now)
    peer.last_handshake_sent = now
    if msg.l2 != state.l2:
        # Answer anyway so the initiator can authenticate us and report it too,
        # but derive no keys: frames of one mode are garbage to the other.
        report_mismatch(state, peer, msg.l2, now)
        del state.indices[index]
        handshake.zero()
        return [Send(source, packed)]
    keypair = Keypair(handshake.derive_session(), now)
    install(state, peer, keypair)
    peer.timers.session_derived(now)
    log.debug("peer %s: response sent, session %d derived", short(peer), index)
    # The keypair first, as send.c begins the session before the response goes:
    # the initiator's first message can come back before the next action is
    # taken, and an external transport would not know its index.
    return [KeypairInstalled(peer, keypair), Send(source, packed)]


def _receive_response(
    state: State, msg: Response, data: bytes, source: Address, now: float
) -> list[Action]:
    rejected = _handshake_admitted(
        state, data, messages.RESPONSE_MAC1_OFFSET, msg.sender, msg.l2, source, now
    )
    if rejected is not None:
        return rejected
    entry = state.indices.get(msg.receiver)
    if entry is None or entry[1] is not None:
        state.drops[Drop.UNKNOWN_INDEX] += 1
        return []
    peer = entry[0]
    try:
        peer.handshake.consume_response(msg)
    except HandshakeError:
        state.drops[Drop.BAD_HANDSHAKE] += 1
        return []
    authenticated(peer, len(data), source, now)
    if msg.l2 != state.l2:
        report_mismatch(state, peer, msg.l2, now)
        drop_handshake_index(state, peer)
        peer.handshake.zero()
        peer.timers.handshake_complete()
        return []
    keypair = Keypair(peer.handshake.derive_session(), now)
    # add_new_keypair() moves a session still held, current or an unconfirmed
    # next, to previous.
    replaced = peer.current is not None or peer.next is not None
    install(state, peer, keypair)
    handshake_complete(state, peer, now, replaced)
    peer.timers.session_derived(now)
    log.debug("peer %s: response received, session %d made", short(peer), msg.receiver)
    actions: list[Action] = [KeypairInstalled(peer, keypair)]
    # The responder cannot send until it hears from us on the new keys.
    if not peer.staged:
        peer.staged.append(b"")
    if state.external_transport:
        # It makes the keypair current as it installs it, before it sends these.
        return actions + transmit_staged(peer)
    return actions + flush_staged(state, peer, now)


def _receive_cookie_reply(state: State, msg: CookieReply, now: float) -> list[Action]:
    entry = state.indices.get(msg.receiver)
    if entry is None:
        state.drops[Drop.UNKNOWN_INDEX] += 1
        return []
    try:
        entry[0].cookies.consume_reply(msg, now)
    except DecryptError:
        state.drops[Drop.BAD_COOKIE] += 1
        return []
    log.debug("peer %s: cookie reply received (it is under load)", short(entry[0]))
    # The retransmit timer resends the initiation, now with a mac2.
    return []


# Transport events: from the path above, or reported by an external transport.


def _confirmed(state: State, peer: Peer, keypair: Keypair, now: float) -> list[Action]:
    """The first transport message on `next` arrived: the responder's session
    is confirmed (whitepaper 5.4.5) and staged packets may go."""
    retire(state, peer.confirm(keypair))
    return session_confirmed(state, peer, now)


def session_confirmed(state: State, peer: Peer, now: float) -> list[Action]:
    """The responder's new session is confirmed: the handshake is complete
    and staged packets may go. An external transport, which confirms keypairs
    itself, says so here, after adopt()."""
    # The confirmation moved the session it replaces, if any, to previous.
    handshake_complete(state, peer, now, peer.previous is not None)
    log.debug("peer %s: session confirmed by its first message", short(peer))
    return flush_staged(state, peer, now)


def transport_received(
    state: State, peer: Peer, source: Address, size: int, data_messages: int, now: float
) -> list[Action]:
    """Authenticated transport bytes arrived from the peer, `data_messages`
    of them not keepalives."""
    authenticated(peer, size, source, now)
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
        return initiate(state, peer, now, retry=False)
    return []
