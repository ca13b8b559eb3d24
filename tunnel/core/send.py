"""Packets from the device toward peers (the kernel's send.c): routing a packet
or switching a frame to its peers, staging it while a handshake is in flight,
encrypting it, and sending initiations and keepalives."""

from tunnel.protocol.constants import ETHERNET_HEADER_SIZE, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX
from tunnel.protocol.keypair import pad
from tunnel.protocol.peer import Peer
from tunnel.protocol.tai64n import tai64n

from . import l3
from .actions import Action, Deliver, Send, SendBatch, Transmit
from .drops import Drop
from .l2 import frame_targets, too_big_reply
from .state import State, count_tx, drop_handshake_index, log, new_index, short


def send_packets(state: State, packets: list[bytes], now: float) -> list[Action]:
    """Packets (tun) or frames (tap) read from the device in one go, in order.
    Each is staged for its peers, then each peer's staged packets go at once:
    one seal loop, and the timers and counters moved once for them all."""
    actions: list[Action] = []
    touched: dict[Peer, None] = {}  # the peers given packets, in order
    # Routing and switching tables do not change while a batch is read, and
    # a batch is mostly one flow: each destination is looked up once.
    targets_of: dict[bytes, list[Peer]] = {}
    l2, drops = state.l2, state.drops
    for packet in packets:
        if l2:
            if len(packet) < ETHERNET_HEADER_SIZE:
                drops[Drop.RUNT_FRAME] += 1
                continue
            # What gets no answer goes anyway: the underlay fragments it.
            answer = answer_too_big(state, packet)
            if answer is not None:
                actions += answer
                continue
            macs = packet[:12]
            targets = targets_of.get(macs)
            if targets is None:
                targets = frame_targets(state.macs, state.peers.values(), packet, now)
                targets_of[macs] = targets
        else:
            header = l3.parse_ip(packet)
            if header is None:
                targets = []
            else:
                # An address's length tells its version: it is key enough.
                version, _, destination, _ = header
                targets = targets_of.get(destination)
                if targets is None:
                    owner = state.routes.lookup(version, destination)
                    targets = targets_of[destination] = [owner] if owner else []
            if not targets:
                drops[Drop.NO_ROUTE] += 1
                actions += unreachable(state, packet, now)
                continue
        for peer in targets:
            if len(peer.staged) == peer.staged.maxlen:
                actions += flush_staged(state, peer, now)  # room first, if it can go
            _hold(peer, packet)
            touched[peer] = None
    for peer in touched:
        actions += flush_staged(state, peer, now)
    return actions


def answer_too_big(state: State, frame: bytes) -> list[Action] | None:
    """tap: the answer a router would give a frame too big for the tunnel
    (core/l2.py), or None where there is none to give."""
    if len(frame) - ETHERNET_HEADER_SIZE <= state.mtu:
        return None
    reply = too_big_reply(frame, state.mtu)
    if reply is None:
        return None
    state.drops[Drop.FRAME_TOO_BIG] += 1
    return [Deliver(reply)]


def unreachable(state: State, packet: bytes, now: float) -> list[Action]:
    """tun: the ICMP error for a packet no peer's allowed IPs cover (core/l3.py),
    at most ICMP_ERRORS_PER_SECOND of them, as Linux limits its own."""
    reply = l3.unreachable(packet)
    if reply is None or not state.icmp_limiter.allow("", now):
        return []
    return [Deliver(reply)]


def need_key(state: State, peer: Peer, now: float) -> list[Action]:
    """An external transport holds packets staged for the peer and no usable
    keypair (gone, too old or worn out by its own clock and counters): a
    handshake, as send.c's wg_packet_send_staged_packets starts one for a packet
    without a keypair. The transport says so once, not once a packet, so an
    initiation the hold keeps back is tried again by tick() once the hold is
    over, unless a handshake completes first. That holds with our own initiation
    in flight too: a response we send meanwhile (its initiation crossed ours)
    holds back the retransmission, which timers.c then drops, as the kernel
    does, counting on the next packet to ask again."""
    actions = initiate(state, peer, now, retry=False)
    if not actions and not hold_over(peer, now):
        state.key_wanted[peer] = None
    return actions


def _hold(peer: Peer, packet: bytes) -> None:
    """Stage the packet; a full queue drops its oldest, counted."""
    if len(peer.staged) == peer.staged.maxlen:
        peer.drops.staged_overflow += 1
    peer.staged.append(packet)


def transport_sent(state: State, peer: Peer, size: int, is_data: bool, now: float) -> list[Action]:
    """Transport bytes went to the peer; sending data may call for a rekey."""
    count_tx(peer, size, now)
    peer.timers.any_authenticated_sent(now, is_data)
    if not is_data:
        return []
    peer.timers.data_sent(now)
    return initiate(state, peer, now, retry=False) if peer.needs_rekey(now) else []


def flush_staged(state: State, peer: Peer, now: float) -> list[Action]:
    """Send what the peer has staged, or start the handshake it waits for."""
    keypair = peer.current
    if keypair is None or keypair.expired(now) or peer.endpoint is None:
        return initiate(state, peer, now, retry=False)
    staged = peer.staged
    if not staged:
        return []
    if state.external_transport:
        return transmit_staged(peer)
    packets = list(staged)
    staged.clear()
    if state.l2:
        datagrams = keypair.seal(packets, True)
    else:
        mtu = state.mtu
        datagrams = keypair.seal([pad(packet, mtu) for packet in packets])
    # Every event below happens at `now`, so once for the batch is the same
    # as once per message: the timers are deadlines from now, the rekey
    # test reads the counter after the last.
    actions: list[Action] = [
        SendBatch(peer.endpoint, datagrams),
        *transport_sent(state, peer, sum(map(len, datagrams)), any(packets), now),
    ]
    if len(datagrams) < len(packets):  # the keypair ran out of messages
        staged.extend(packets[len(datagrams) :])
        actions += initiate(state, peer, now, retry=False)
    return actions


def transmit_staged(peer: Peer) -> list[Action]:
    """With an external transport: what the peer has staged, for the transport
    to seal and send on the keypair it holds as current."""
    transmits: list[Action] = [Transmit(peer, packet) for packet in peer.staged]
    peer.staged.clear()
    return transmits


def keepalive(state: State, peer: Peer, now: float) -> list[Action]:
    """An empty transport message, unless data is staged to go anyway."""
    if not peer.staged:
        peer.staged.append(b"")
    return flush_staged(state, peer, now)


def hold_over(peer: Peer, now: float) -> bool:
    """A handshake message sent, initiation or response, holds back the next
    initiation for REKEY_TIMEOUT, retries too (send.c
    wg_packet_send_queued_handshake_initiation): an end that just answered
    waits for its answer to complete the session."""
    return now - peer.last_handshake_sent >= REKEY_TIMEOUT


def initiate(state: State, peer: Peer, now: float, retry: bool) -> list[Action]:
    """A handshake initiation to the peer, unless one went too recently."""
    if peer.endpoint is None or not state.identity.present:
        return []
    if not retry:
        peer.timers.handshake_attempts = 0
    if not hold_over(peer, now):
        return []
    drop_handshake_index(state, peer)
    index = new_index(state, peer, None)
    initiation = peer.handshake.create_initiation(
        index, state.randbytes(32), tai64n(now + state.wall_offset), state.l2
    )
    data = peer.cookies.add_macs(initiation.pack(), now)
    peer.last_initiation_sent = peer.last_handshake_sent = now
    peer.handshakes.initiations_sent += 1
    jitter = int.from_bytes(state.randbytes(2), "little") / 65536 * REKEY_TIMEOUT_JITTER_MAX
    peer.timers.handshake_initiated(now, jitter)
    count_tx(peer, len(data), now)
    log.debug(
        "peer %s: initiation sent (attempt %d)", short(peer), peer.timers.handshake_attempts + 1
    )
    return [Send(peer.endpoint, data)]
