"""mac1/mac2 and cookie replies (whitepaper section 5.4.4 and 5.4.7, cookie.c):
mac1 proves the sender knows our public key; under load mac2 proves it can receive
at its source address, via a cookie we handed out in a cookie reply."""

import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from . import crypto
from .address import Address
from .constants import COOKIE_SECRET_MAX_AGE, LABEL_COOKIE, LABEL_MAC1, REKEY_TIMEOUT
from .messages import CookieReply


def source_bytes(address: Address) -> bytes:
    host, port = address
    return ipaddress.ip_address(host.split("%")[0]).packed + port.to_bytes(2, "big")


@dataclass
class CookieChecker:
    """The responder side: validates MACs on messages sent to us, makes cookie replies."""

    public_key: bytes
    randbytes: Callable[[int], bytes]
    secret: bytes = b""
    secret_born: float = float("-inf")

    def __post_init__(self) -> None:
        self.mac1_key = crypto.hash_(LABEL_MAC1 + self.public_key)
        self.cookie_key = crypto.hash_(LABEL_COOKIE + self.public_key)

    def mac1_valid(self, message: bytes, mac1_offset: int) -> bool:
        expected = crypto.mac(self.mac1_key, message[:mac1_offset])
        return hmac.compare_digest(expected, message[mac1_offset : mac1_offset + 16])

    def _cookie(self, source: Address, now: float) -> bytes:
        if now - self.secret_born >= COOKIE_SECRET_MAX_AGE:
            self.secret = self.randbytes(32)
            self.secret_born = now
        return crypto.mac(self.secret, source_bytes(source))

    def mac2_valid(self, message: bytes, mac1_offset: int, source: Address, now: float) -> bool:
        mac2_offset = mac1_offset + 16
        expected = crypto.mac(self._cookie(source, now), message[:mac2_offset])
        return hmac.compare_digest(expected, message[mac2_offset : mac2_offset + 16])

    def create_reply(
        self,
        message: bytes,
        mac1_offset: int,
        sender: int,
        source: Address,
        now: float,
        l2: bool = False,
    ) -> CookieReply:
        nonce = self.randbytes(24)
        mac1 = message[mac1_offset : mac1_offset + 16]
        encrypted = crypto.xaead_encrypt(self.cookie_key, nonce, self._cookie(source, now), mac1)
        return CookieReply(sender, nonce, encrypted, l2)


@dataclass
class CookieGenerator:
    """The sender side, per peer: adds mac1/mac2 to our messages and keeps the
    cookie the peer last gave us."""

    remote_public_key: bytes
    cookie: bytes = b""
    cookie_received: float = float("-inf")
    last_mac1: bytes = b""

    def __post_init__(self) -> None:
        self.mac1_key = crypto.hash_(LABEL_MAC1 + self.remote_public_key)
        self.cookie_key = crypto.hash_(LABEL_COOKIE + self.remote_public_key)

    def add_macs(self, message: bytes, now: float) -> bytes:
        """Fill in mac1 and mac2 (the last 32 bytes of a handshake message)."""
        body = message[:-32]
        mac1 = crypto.mac(self.mac1_key, body)
        self.last_mac1 = mac1
        # A cookie is only good for two minutes, less a margin for the round trip.
        if self.cookie and now - self.cookie_received < COOKIE_SECRET_MAX_AGE - REKEY_TIMEOUT:
            mac2 = crypto.mac(self.cookie, body + mac1)
        else:
            mac2 = bytes(16)
        return body + mac1 + mac2

    def consume_reply(self, reply: CookieReply, now: float) -> None:
        if not self.last_mac1:
            raise crypto.DecryptError("no message of ours awaits a cookie")
        self.cookie = crypto.xaead_decrypt(
            self.cookie_key, reply.nonce, reply.encrypted_cookie, self.last_mac1
        )
        self.cookie_received = now
        # Answered: the same reply again is a replay (cookie.c clears have_sent_mac1).
        self.last_mac1 = b""
