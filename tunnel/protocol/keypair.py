"""A session's transport keys and counters (noise_keypair in noise.c) and the
transport message encryption of whitepaper section 5.4.6."""

from dataclasses import dataclass, field

from . import crypto
from .constants import MESSAGE_PADDING_MULTIPLE, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from .messages import Transport, transport_prefix
from .noise import SessionKeys
from .replay import ReplayWindow


class KeypairExpired(Exception):
    """The keypair may no longer send: too old or too many messages."""


@dataclass
class Keypair:
    keys: SessionKeys
    created: float
    send_counter: int = 0
    replay: ReplayWindow = field(default_factory=ReplayWindow)

    @property
    def local_index(self) -> int:
        return self.keys.local_index

    def expired(self, now: float) -> bool:
        return now - self.created >= REJECT_AFTER_TIME or self.send_counter >= REJECT_AFTER_MESSAGES

    def seal(self, plaintexts: list[bytes], l2: bool = False) -> list[bytes]:
        """Transport messages for the plaintexts, in order: as many of them as the
        keypair may still send by its counter (the caller checks its age)."""
        counter = self.send_counter
        prefix = transport_prefix(self.keys.remote_index, l2)
        encrypt = self.keys.ciphers()[0].encrypt
        sealed: list[bytes] = []
        for plaintext in plaintexts[: REJECT_AFTER_MESSAGES - counter]:
            sealed.append(
                prefix
                + counter.to_bytes(8, "little")
                + encrypt(crypto.aead_nonce(counter), plaintext, None)
            )
            counter += 1
        self.send_counter = counter
        return sealed

    def encrypt(self, plaintext: bytes, now: float, l2: bool = False) -> bytes:
        if self.expired(now):
            raise KeypairExpired
        return self.seal([plaintext], l2)[0]

    def open(self, counter: int, encrypted: bytes | memoryview, now: float) -> bytes | None:
        """The plaintext of a transport message's encrypted packet, or None if it
        is forged, replayed or too late."""
        if now - self.created >= REJECT_AFTER_TIME or not self.replay.check(counter):
            return None
        try:
            plaintext = self.keys.ciphers()[1].decrypt(crypto.aead_nonce(counter), encrypted, None)
        except crypto.TransportCipherError:
            return None
        # Only an authenticated counter may move the window (whitepaper 5.4.6).
        if not self.replay.accept(counter):
            return None
        return plaintext

    def decrypt(self, msg: Transport, now: float) -> bytes | None:
        """The plaintext, or None if the message is forged, replayed or too late."""
        return self.open(msg.counter, msg.encrypted_packet, now)


def pad(packet: bytes, mtu: int) -> bytes:
    """Zero-pad to a multiple of 16 without passing the MTU, hiding exact lengths."""
    size = len(packet)
    if not size % MESSAGE_PADDING_MULTIPLE or size >= mtu:
        return packet  # the common full-size packet: nothing to add
    padded = -(-size // MESSAGE_PADDING_MULTIPLE) * MESSAGE_PADDING_MULTIPLE
    return packet + bytes(min(padded, mtu) - size)
