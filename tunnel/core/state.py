"""What the core keeps (the kernel's struct wg_device and its index hashtable):
peers, the index table, routing and switching tables, limiters and counters; and
the bookkeeping over it that the receive, send and timer paths share (the
kernel's peer.c and noise.c helpers), as functions of the state."""

import logging
import os
from collections import Counter, deque
from collections.abc import Callable

from tunnel.protocol.address import Address
from tunnel.protocol.allowed_ips import AllowedIPs
from tunnel.protocol.constants import (
    DEFAULT_MAC_AGEING,
    DEFAULT_MTU,
    ICMP_ERRORS_BURST,
    ICMP_ERRORS_PER_SECOND,
    UNDER_LOAD_INITIATIONS_PER_SECOND,
)
from tunnel.protocol.cookie import CookieChecker
from tunnel.protocol.keypair import Keypair
from tunnel.protocol.keys import encode
from tunnel.protocol.noise import StaticIdentity
from tunnel.protocol.peer import Peer
from tunnel.protocol.ratelimiter import RateLimiter

from .drops import Drop
from .l2 import MacTable, Switch

log = logging.getLogger("pyvpn")

# A warning about what one peer keeps doing goes to the log at most this often.
REPORT_INTERVAL = 60.0


def mode_name(l2: bool) -> str:
    return "tap" if l2 else "tun"


def short(peer: Peer) -> str:
    return encode(peer.public_key)[:8] + "…"


def reportable(peer: Peer, what: str, now: float) -> bool:
    """Whether the warning `what` about the peer may go to the log now."""
    if now - peer.reported.get(what, float("-inf")) < REPORT_INTERVAL:
        return False
    peer.reported[what] = now
    return True


class State:
    def __init__(
        self,
        private_key: bytes,
        *,
        l2: bool = False,
        mtu: int = DEFAULT_MTU,
        randbytes: Callable[[int], bytes] = os.urandom,
        wall_offset: float = 0.0,
        mac_ageing: float = DEFAULT_MAC_AGEING,
        under_load_threshold: int = UNDER_LOAD_INITIATIONS_PER_SECOND,
        external_transport: bool = False,
        external_handshakes: bool = False,
    ) -> None:
        self.identity = StaticIdentity(private_key)
        # With an external transport (the native plane) transport messages never
        # pass through here: this core must then never encrypt, or two counters
        # would use the same nonces.
        self.external_transport = external_transport
        # With external handshakes (the native plane's worker) an initiation's
        # public-key work is done off this thread: the core only decides
        # (receive.receive_consumed_initiation).
        self.external_handshakes = external_handshakes
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
        # Initiations counted in the current second (core/receive.py).
        self.load_second = 0
        self.load_count = 0
        # Peers still to be greeted with an initiation since start (core/ticks.py).
        self.greeting: deque[Peer] = deque()
        self.greeting_since = 0.0
        self.greeted = 0
        self.drops: Counter[Drop] = Counter()
        self.cookie_replies_sent = 0
        # Peers an external transport wants a key for, whose initiation the hold
        # kept back (core/send.py need_key): tried again when it is over.
        self.key_wanted: dict[Peer, None] = {}


def authenticated(peer: Peer, size: int, source: Address, now: float) -> None:
    """Roaming (whitepaper 2.1): the last authenticated source is the endpoint."""
    if peer.endpoint != source:
        if peer.endpoint is not None:
            log.info("peer %s roamed to %s:%d", short(peer), *source)
        peer.endpoint = source
    peer.rx_bytes += size
    peer.timers.any_authenticated_received()
    peer.timers.any_authenticated_traversal(now)


def count_tx(peer: Peer, size: int, now: float) -> None:
    peer.tx_bytes += size
    peer.timers.any_authenticated_traversal(now)


def handshake_complete(state: State, peer: Peer, now: float, replaced: bool) -> None:
    """A handshake made a session; `replaced`: it took over from a session
    still held, which its slot's owner moves to `previous`."""
    peer.handshakes.completed += 1
    state.key_wanted.pop(peer, None)
    if replaced:
        peer.handshakes.rekeys += 1
    peer.timers.handshake_complete()
    peer.last_handshake_wall = now + state.wall_offset


def install(state: State, peer: Peer, keypair: Keypair) -> None:
    """A handshake made a keypair: into its slot (Peer.install). An external
    transport owns the slots and shuffles them itself when it carries out
    KeypairInstalled; the core holds the keypair aside until adopt() learns
    which slot it took, and when it is freed."""
    state.indices[keypair.local_index] = (peer, keypair)
    if state.external_transport:
        peer.held[keypair.local_index] = keypair
        return
    retire(state, peer.install(keypair))


def clear_keypairs(state: State, peer: Peer) -> None:
    """Every keypair of the peer goes (KeypairsCleared). An external transport
    empties its slots itself, and adopt() learns it."""
    if not state.external_transport:
        retire(state, peer.clear_keypairs())


def retire(state: State, keypairs: list[Keypair]) -> None:
    """Keypairs the core's own shuffle let go (never with an external transport,
    which frees its keypairs itself)."""
    for keypair in keypairs:
        log.debug("keypair %d retired", keypair.local_index)
        keypair.keys.erase()
        entry = state.indices.get(keypair.local_index)
        if entry is not None and entry[1] is keypair:
            del state.indices[keypair.local_index]


def adopt(
    state: State, peer: Peer, current: int | None, previous: int | None, next_: int | None
) -> None:
    """With an external transport, which owns the keypair slots (the native
    plane: native/peer.c runs add_new_keypair() and the confirmation), the
    peer's slots become the keypairs it reports by local index, and the ones
    it no longer holds are forgotten. The core's slots change only here."""
    held = peer.held
    peer.current, peer.previous, peer.next = (
        None if i is None else held.get(i) for i in (current, previous, next_)
    )
    for index in held.keys() - {current, previous, next_}:
        log.debug("keypair %d retired", index)
        del held[index]
        entry = state.indices.get(index)
        if entry is not None and entry[0] is peer:
            del state.indices[index]


def drop_handshake_index(state: State, peer: Peer) -> None:
    entry = state.indices.get(peer.handshake.local_index)
    if entry is not None and entry[0] is peer and entry[1] is None:
        del state.indices[peer.handshake.local_index]


def forget_indices(state: State, peer: Peer) -> None:
    state.indices = {i: e for i, e in state.indices.items() if e[0] is not peer}


def new_index(state: State, peer: Peer, keypair: Keypair | None) -> int:
    while True:
        index = int.from_bytes(state.randbytes(4), "little")
        if index not in state.indices:
            state.indices[index] = (peer, keypair)
            return index


def mac_conflict(peer: Peer, now: float) -> None:
    """tap: the peer sent frames from a MAC address another peer holds. Dropped
    and counted (its drops' bad_source); said in the log, once a minute."""
    if reportable(peer, "mac_conflict", now):
        log.warning(
            "peer %s sent frames from MAC addresses it may not use (another peer's "
            "hosts hold them, or they are outside its allowed_macs): dropped (%d so far)",
            short(peer),
            peer.drops.bad_source,
        )


def report_mismatch(state: State, peer: Peer, remote_l2: bool, now: float) -> None:
    state.drops[Drop.MODE_MISMATCH] += 1
    if reportable(peer, "mode_mismatch", now):
        log.warning(
            "peer %s is configured for %s mode but this interface is %s: "
            "no traffic can flow until both ends use the same mode",
            short(peer),
            mode_name(remote_l2),
            mode_name(state.l2),
        )
