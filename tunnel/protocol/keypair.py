"""A session's transport keys and counters (noise_keypair in noise.c) and the
transport message encryption of whitepaper section 5.4.6."""

from dataclasses import dataclass, field

from . import crypto
from .constants import MESSAGE_PADDING_MULTIPLE, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from .messages import Transport
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

    def encrypt(self, plaintext: bytes, now: float, l2: bool = False) -> bytes:
        if self.expired(now):
            raise KeypairExpired
        counter = self.send_counter
        self.send_counter += 1
        sealed = crypto.aead_encrypt(self.keys.send_key, counter, plaintext, b"")
        return Transport(self.keys.remote_index, counter, sealed, l2).pack()

    def decrypt(self, msg: Transport, now: float) -> bytes | None:
        """The plaintext, or None if the message is forged, replayed or too late."""
        if now - self.created >= REJECT_AFTER_TIME or not self.replay.check(msg.counter):
            return None
        try:
            plaintext = crypto.aead_decrypt(
                self.keys.receive_key, msg.counter, msg.encrypted_packet, b""
            )
        except crypto.DecryptError:
            return None
        # Only an authenticated counter may move the window (whitepaper 5.4.6).
        if not self.replay.accept(msg.counter):
            return None
        return plaintext


def pad(packet: bytes, mtu: int) -> bytes:
    """Zero-pad to a multiple of 16 without passing the MTU, hiding exact lengths."""
    padded = -(-len(packet) // MESSAGE_PADDING_MULTIPLE) * MESSAGE_PADDING_MULTIPLE
    return packet + bytes(max(0, min(padded, mtu) - len(packet)))
