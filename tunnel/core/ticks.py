"""Clock ticks (the handlers of the kernel's timers.c): what the core does when
one of a peer's timers fires. protocol/timers.py keeps the deadlines."""

from tunnel.protocol.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REKEY_TIMEOUT,
    START_INITIATIONS_BURST,
    START_INITIATIONS_PER_SECOND,
)
from tunnel.protocol.peer import Peer
from tunnel.protocol.timers import Timer

from .actions import Action, KeypairsCleared, StagedPurged
from .send import hold_over, initiate, keepalive, need_key
from .state import State, clear_keypairs, drop_handshake_index, log, short


def tick(state: State, now: float) -> list[Action]:
    """Every timer due by `now`, the keys wanted since the hold ended, and the
    greetings still due since start."""
    actions: list[Action] = []
    for peer in [p for p in state.peers.values() if p.timers.earliest <= now]:
        for timer in peer.timers.expired(now):
            actions += _timer_fired(state, peer, timer, now)
    for peer in [p for p in state.key_wanted if hold_over(p, now)]:
        del state.key_wanted[peer]
        if state.peers.get(peer.public_key) is peer:
            actions += need_key(state, peer, now)
    return actions + greet(state, now)


def greet(state: State, now: float) -> list[Action]:
    """The initiations still due since start, as many as the pace allows."""
    allowed = START_INITIATIONS_BURST + int(
        (now - state.greeting_since) * START_INITIATIONS_PER_SECOND
    )
    actions: list[Action] = []
    while state.greeting and state.greeted < allowed:
        peer = state.greeting.popleft()
        if state.peers.get(peer.public_key) is not peer or peer.current is not None:
            continue  # removed meanwhile, or in session already
        state.greeted += 1
        actions += initiate(state, peer, now, retry=False)
    return actions


def _timer_fired(state: State, peer: Peer, timer: Timer, now: float) -> list[Action]:
    if timer is Timer.RETRANSMIT_HANDSHAKE:
        if peer.timers.handshake_attempts > MAX_TIMER_HANDSHAKES:
            log.info(
                "peer %s: handshake did not complete after %d attempts, giving up",
                short(peer),
                peer.timers.handshake_attempts + 1,
            )
            peer.timers.gave_up()
            peer.staged.clear()
            if not peer.timers.pending(Timer.ZERO_KEY_MATERIAL):
                peer.timers.session_derived(now)
            # An external transport holds its own staged packets (the native plane).
            return [StagedPurged(peer)] if state.external_transport else []
        peer.timers.handshake_attempts += 1
        return initiate(state, peer, now, retry=True)
    if timer is Timer.SEND_KEEPALIVE:
        peer.timers.keepalive_due()
        return keepalive(state, peer, now)
    if timer is Timer.NEW_HANDSHAKE:
        log.info(
            "peer %s: no reply for %.0f s, handshaking again",
            short(peer),
            KEEPALIVE_TIMEOUT + REKEY_TIMEOUT,
        )
        return initiate(state, peer, now, retry=False)
    if timer is Timer.ZERO_KEY_MATERIAL:
        clear_keypairs(state, peer)
        drop_handshake_index(state, peer)
        peer.handshake.zero()
        return [KeypairsCleared(peer)]
    return keepalive(state, peer, now)  # PERSISTENT_KEEPALIVE
