"""One remote peer's state (peer.h): its handshake, up to three keypairs, packets
staged while a handshake is in flight, timers and the figures `show` reports."""

from collections import deque
from dataclasses import dataclass

from .constants import MAX_STAGED_PACKETS, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME
from .cookie import CookieGenerator
from .keypair import Keypair
from .noise import Handshake, StaticIdentity
from .peer_config import PeerConfig
from .timers import Timers


@dataclass
class DropCounters:
    """Why packets from or for this peer were dropped, for `show`."""

    replay_or_forged: int = 0
    bad_source: int = 0
    not_ip: int = 0
    staged_overflow: int = 0


@dataclass
class HandshakeCounters:
    """How this peer's handshakes went, for `show` and `pyvpn metrics`."""

    initiations_sent: int = 0  # retries included
    completed: int = 0
    rekeys: int = 0  # completed ones that replaced a session still held


class Peer:
    def __init__(self, identity: StaticIdentity, config: PeerConfig) -> None:
        self.public_key = config.public_key
        self.preshared_key = config.preshared_key
        self.endpoint = config.endpoint
        self.endpoint_name = config.endpoint_name
        self.allowed_macs = frozenset(config.allowed_macs)
        self.handshake = Handshake(identity, config.public_key, config.preshared_key or bytes(32))
        self.cookies = CookieGenerator(config.public_key)
        self.timers = Timers(float(config.persistent_keepalive))
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        # With an external transport, which owns the slots: every keypair handed
        # to it that it may still hold, by local index; the slots above are what
        # it reports (Interface.adopt), never shuffled here.
        self.held: dict[int, Keypair] = {}
        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        self.last_initiation_sent = float("-inf")
        # An initiation or a response: either holds back our next initiation for
        # REKEY_TIMEOUT (send.c's last_sent_handshake).
        self.last_handshake_sent = float("-inf")
        self.last_initiation_consumed = float("-inf")
        self.last_handshake_wall: float | None = None
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.drops = DropCounters()
        self.handshakes = HandshakeCounters()
        self.reported: dict[str, float] = {}  # when each warning about it was last logged

    @property
    def persistent_keepalive(self) -> int:
        return int(self.timers.persistent_keepalive_interval)

    def set_preshared_key(self, preshared_key: bytes | None) -> None:
        """Used from the next handshake on; the current session keeps its keys."""
        self.preshared_key = preshared_key
        self.handshake.preshared_key = preshared_key or bytes(32)

    def rekey_identity(self, identity: StaticIdentity) -> None:
        """Our static key changed: a fresh handshake state precomputes the new
        static-static DH, keeping the replay guard on the peer's timestamps."""
        latest = self.handshake.latest_timestamp
        self.handshake = Handshake(identity, self.public_key, self.preshared_key or bytes(32))
        self.handshake.latest_timestamp = latest

    def keypairs(self) -> list[Keypair]:
        return [k for k in (self.current, self.previous, self.next) if k is not None]

    def install(self, keypair: Keypair) -> list[Keypair]:
        """Make a fresh keypair usable and return the ones it retires.
        The initiator may send at once; the responder must wait for the initiator's
        first transport message (confirmation) before sending, so it goes to `next`
        (whitepaper section 5.4.5, noise.c add_new_keypair). Only the slots'
        owner shuffles: the core, with this, on the Python plane; on the native
        plane C (dp_keypair_install), and the core adopts what it reports."""
        if keypair.keys.is_initiator:
            if self.next is not None:
                # An unconfirmed responder session outranks the current one.
                retired = [k for k in (self.current, self.previous) if k is not None]
                self.previous, self.next = self.next, None
            else:
                retired = [self.previous] if self.previous else []
                self.previous = self.current
            self.current = keypair
        else:
            retired = [k for k in (self.next, self.previous) if k is not None]
            self.next, self.previous = keypair, None
        return retired

    def confirm(self, keypair: Keypair) -> list[Keypair]:
        """A transport message arrived on `next`: promote it (received_with_keypair)."""
        if keypair is not self.next:
            return []
        retired = [self.previous] if self.previous else []
        self.previous, self.current, self.next = self.current, keypair, None
        return retired

    def clear_keypairs(self) -> list[Keypair]:
        retired = self.keypairs()
        self.current = self.previous = self.next = None
        return retired

    def needs_rekey(self, now: float) -> bool:
        """The sending-side freshness test of timers.c keep_key_fresh: only the
        initiator rekeys on age, so the two ends do not both start handshakes."""
        k = self.current
        return k is not None and (
            k.send_counter > REKEY_AFTER_MESSAGES
            or (k.keys.is_initiator and now - k.created > REKEY_AFTER_TIME)
        )
