"""Noise_IKpsk2 handshake as WireGuard defines it (whitepaper section 5.4.2-5.4.4,
drivers/net/wireguard/noise.c). Sans-IO: ephemeral keys and timestamps are passed
in; the caller owns sockets, clocks and randomness."""

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

from . import crypto
from .constants import CONSTRUCTION, IDENTIFIER
from .keys import low_order
from .messages import Initiation, Response

# C_i and H_i before any message: constants, so computed once (noise.c does the same).
INITIAL_CHAINING_KEY = crypto.hash_(CONSTRUCTION)
INITIAL_HASH = crypto.hash_(INITIAL_CHAINING_KEY + IDENTIFIER)
EMPTY_MAC = bytes(16)


class HandshakeError(Exception):
    """A handshake message that does not authenticate or is not expected now."""


class HandshakeState(Enum):
    ZEROED = auto()
    CREATED_INITIATION = auto()
    CONSUMED_INITIATION = auto()
    CREATED_RESPONSE = auto()
    CONSUMED_RESPONSE = auto()


@dataclass
class StaticIdentity:
    """The interface's static key pair. An all-zero private key is none at all, as
    wireguard-go keeps it (device/noise-types.go IsZero): an interface without one
    makes and answers no handshakes, and its public key reads as zeros, a low-order
    point nobody can handshake with."""

    private_key: bytes
    public_key: bytes = b""
    # Loaded once: every handshake message takes a DH with it.
    key: crypto.X25519PrivateKey | None = field(init=False, repr=False)
    # H after our public key is mixed in: where every initiation to us starts.
    responder_hash: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.key = crypto.private_key(self.private_key) if self.present else None
        self.public_key = crypto.public_of(self.key) if self.key is not None else bytes(32)
        self.responder_hash = crypto.hash_(INITIAL_HASH + self.public_key)

    @property
    def present(self) -> bool:
        return any(self.private_key)


@dataclass
class SessionKeys:
    """The output of a completed handshake: transport keys and indices."""

    local_index: int
    remote_index: int
    # Buffers, so that erase() can overwrite them: immutable bytes could only be
    # dropped, and would stay in the heap until reused.
    send_key: bytearray
    receive_key: bytearray
    is_initiator: bool

    # The keys bound into ciphers, made on first use (crypto.transport_cipher).
    _ciphers: tuple[crypto.TransportCipher, crypto.TransportCipher] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def ciphers(self) -> tuple[crypto.TransportCipher, crypto.TransportCipher]:
        """(sending, receiving) ciphers bound to the keys."""
        if self._ciphers is None:
            self._ciphers = (
                crypto.transport_cipher(self.send_key),
                crypto.transport_cipher(self.receive_key),
            )
        return self._ciphers

    def erase(self) -> None:
        """Overwrite the keys (a handover to the native plane, or a keypair gone),
        and drop the ciphers holding OpenSSL's copies of them."""
        self.send_key[:] = bytes(len(self.send_key))
        self.receive_key[:] = bytes(len(self.receive_key))
        self._ciphers = None


@dataclass
class ResponseStart:
    """A response as far as it goes before the peer's psk: the responder's
    ephemeral key mixed in and its two DH, with the initiator's ephemeral and
    static keys. Only the initiation, our static key and the initiator's decide
    it, so a worker may compute it before the core picks the peer
    (native/handshake.c)."""

    ephemeral_public: bytes
    hash: bytes
    chaining_key: bytes


def start_response(
    hash_: bytes,
    chaining_key: bytes,
    remote_ephemeral: bytes,
    remote_static: bytes,
    ephemeral_private: bytes,
) -> ResponseStart:
    """From a consumed initiation's hash and chaining key."""
    ephemeral = crypto.private_key(ephemeral_private)
    ephemeral_public = crypto.public_of(ephemeral)
    (c,) = crypto.kdf(chaining_key, ephemeral_public, 1)
    h = crypto.hash_(hash_ + ephemeral_public)
    (c,) = crypto.kdf(c, crypto.dh(ephemeral, remote_ephemeral), 1)
    (c,) = crypto.kdf(c, crypto.dh(ephemeral, remote_static), 1)
    return ResponseStart(ephemeral_public, h, c)


@dataclass
class Handshake:
    """One peer's handshake state (noise_handshake in noise.c)."""

    identity: StaticIdentity
    remote_static: bytes
    preshared_key: bytes = bytes(32)
    state: HandshakeState = HandshakeState.ZEROED
    hash: bytes = b""
    chaining_key: bytes = b""
    local_ephemeral: bytes = b""
    remote_ephemeral: bytes = b""
    local_index: int = 0
    remote_index: int = 0
    # Greatest TAI64N timestamp accepted from this peer: older ones are replays.
    latest_timestamp: bytes = bytes(12)
    _static_static: bytes = field(default=b"", repr=False, init=False)

    def __post_init__(self) -> None:
        # The config and the UAPI refuse such a key first.
        if low_order(self.remote_static):
            raise ValueError("the peer's public key is a low-order point")

    @property
    def precomputed_static_static(self) -> bytes:
        """DH(our static, theirs), made at the first handshake rather than when
        the peer is added: a hub of 10,000 peers starts half a second sooner."""
        if not self._static_static:
            self._static_static = crypto.dh(self.identity.key, self.remote_static)
        return self._static_static

    def for_answer(self) -> "Handshake":
        """A second state, to answer the peer's initiation while ours is in flight.
        The kernel overwrites its one state here, so when both ends initiate at
        once each drops the response to its own initiation; keeping ours lets the
        answer to it complete a session within one round trip. Replay protection
        stays with this state: the caller takes `latest_timestamp` back."""
        fork = Handshake(
            self.identity, self.remote_static, self.preshared_key,
            latest_timestamp=self.latest_timestamp,
        )  # fmt: skip
        fork._static_static = self._static_static
        return fork

    def zero(self) -> None:
        self.state = HandshakeState.ZEROED
        self.hash = self.chaining_key = self.local_ephemeral = self.remote_ephemeral = b""
        self.local_index = self.remote_index = 0

    def create_initiation(
        self, local_index: int, ephemeral_private: bytes, timestamp: bytes, l2: bool = False
    ) -> Initiation:
        """Build an initiation without MACs (cookie.py adds them)."""
        h = crypto.hash_(INITIAL_HASH + self.remote_static)
        ephemeral = crypto.private_key(ephemeral_private)
        ephemeral_public = crypto.public_of(ephemeral)
        (c,) = crypto.kdf(INITIAL_CHAINING_KEY, ephemeral_public, 1)
        h = crypto.hash_(h + ephemeral_public)
        c, k = crypto.kdf(c, crypto.dh(ephemeral, self.remote_static), 2)
        encrypted_static = crypto.aead_encrypt(k, 0, self.identity.public_key, h)
        h = crypto.hash_(h + encrypted_static)
        c, k = crypto.kdf(c, self.precomputed_static_static, 2)
        encrypted_timestamp = crypto.aead_encrypt(k, 0, timestamp, h)
        h = crypto.hash_(h + encrypted_timestamp)
        self.hash, self.chaining_key = h, c
        self.local_ephemeral = ephemeral_private
        self.local_index = local_index
        self.state = HandshakeState.CREATED_INITIATION
        return Initiation(
            local_index,
            ephemeral_public,
            encrypted_static,
            encrypted_timestamp,
            EMPTY_MAC,
            EMPTY_MAC,
            l2,
        )

    def create_response(
        self, local_index: int, ephemeral_private: bytes, l2: bool = False
    ) -> Response:
        if self.state is not HandshakeState.CONSUMED_INITIATION:
            raise HandshakeError("no initiation to respond to")
        start = start_response(
            self.hash, self.chaining_key, self.remote_ephemeral, self.remote_static,
            ephemeral_private,
        )  # fmt: skip
        self.local_ephemeral = ephemeral_private
        return self.finish_response(local_index, start, l2)

    def finish_response(self, local_index: int, start: ResponseStart, l2: bool = False) -> Response:
        """The response from its start (start_response, or the native plane's
        handshake worker): what depends on this peer, its psk, and the empty AEAD."""
        if self.state is not HandshakeState.CONSUMED_INITIATION:
            raise HandshakeError("no initiation to respond to")
        c, t, k = crypto.kdf(start.chaining_key, self.preshared_key, 3)
        h = crypto.hash_(start.hash + t)
        encrypted_nothing = crypto.aead_encrypt(k, 0, b"", h)
        h = crypto.hash_(h + encrypted_nothing)
        self.hash, self.chaining_key = h, c
        self.local_index = local_index
        self.state = HandshakeState.CREATED_RESPONSE
        return Response(
            local_index,
            self.remote_index,
            start.ephemeral_public,
            encrypted_nothing,
            EMPTY_MAC,
            EMPTY_MAC,
            l2,
        )

    def consume_response(self, msg: Response) -> None:
        if self.state is not HandshakeState.CREATED_INITIATION or msg.receiver != self.local_index:
            raise HandshakeError("response does not match an initiation in flight")
        h, c = self.hash, self.chaining_key
        (c,) = crypto.kdf(c, msg.ephemeral, 1)
        h = crypto.hash_(h + msg.ephemeral)
        try:
            # A low-order ephemeral fails here, as a forged tag fails below.
            (c,) = crypto.kdf(c, crypto.dh(self.local_ephemeral, msg.ephemeral), 1)
            (c,) = crypto.kdf(c, crypto.dh(self.identity.key, msg.ephemeral), 1)
            c, t, k = crypto.kdf(c, self.preshared_key, 3)
            h = crypto.hash_(h + t)
            crypto.aead_decrypt(k, 0, msg.encrypted_nothing, h)
        except crypto.DecryptError:
            raise HandshakeError("response does not authenticate") from None
        h = crypto.hash_(h + msg.encrypted_nothing)
        self.hash, self.chaining_key = h, c
        self.remote_index = msg.sender
        self.remote_ephemeral = msg.ephemeral
        self.state = HandshakeState.CONSUMED_RESPONSE

    def derive_session(self) -> SessionKeys:
        """Split the chaining key into transport keys and forget the handshake."""
        if self.state is HandshakeState.CONSUMED_RESPONSE:
            is_initiator = True
        elif self.state is HandshakeState.CREATED_RESPONSE:
            is_initiator = False
        else:
            raise HandshakeError("handshake is not complete")
        first, second = crypto.kdf(self.chaining_key, b"", 2)
        send, receive = (first, second) if is_initiator else (second, first)
        keys = SessionKeys(
            self.local_index, self.remote_index, bytearray(send), bytearray(receive), is_initiator
        )
        self.zero()
        return keys


@dataclass
class ConsumedInitiation:
    """What the responder learns from a valid initiation before choosing to accept it."""

    remote_static: bytes
    remote_ephemeral: bytes
    remote_index: int
    timestamp: bytes
    hash: bytes
    chaining_key: bytes


def consume_initiation(
    identity: StaticIdentity,
    msg: Initiation,
    precomputed: Callable[[bytes], bytes | None] = lambda remote_static: None,
) -> ConsumedInitiation:
    """Decrypt an initiation's static key and timestamp. The caller maps the static key
    to a peer, checks the timestamp and flood limits, then calls `accept_initiation`.
    `precomputed` gives a known peer's static-static DH (Handshake's, as noise.c
    uses it here), which saves one DH of the responder's four."""
    h = identity.responder_hash
    (c,) = crypto.kdf(INITIAL_CHAINING_KEY, msg.ephemeral, 1)
    h = crypto.hash_(h + msg.ephemeral)
    try:
        c, k = crypto.kdf(c, crypto.dh(identity.key, msg.ephemeral), 2)
        remote_static = crypto.aead_decrypt(k, 0, msg.encrypted_static, h)
        h = crypto.hash_(h + msg.encrypted_static)
        static_static = precomputed(remote_static) or crypto.dh(identity.key, remote_static)
        c, k = crypto.kdf(c, static_static, 2)
        timestamp = crypto.aead_decrypt(k, 0, msg.encrypted_timestamp, h)
    except crypto.DecryptError:
        raise HandshakeError("initiation does not authenticate") from None
    h = crypto.hash_(h + msg.encrypted_timestamp)
    return ConsumedInitiation(remote_static, msg.ephemeral, msg.sender, timestamp, h, c)


def accept_initiation(handshake: Handshake, consumed: ConsumedInitiation) -> None:
    if consumed.timestamp <= handshake.latest_timestamp:
        raise HandshakeError("initiation timestamp is not newer than the last one (replay)")
    handshake.latest_timestamp = consumed.timestamp
    handshake.hash, handshake.chaining_key = consumed.hash, consumed.chaining_key
    handshake.remote_ephemeral = consumed.remote_ephemeral
    handshake.remote_index = consumed.remote_index
    handshake.state = HandshakeState.CONSUMED_INITIATION
