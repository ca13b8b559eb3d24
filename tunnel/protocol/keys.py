"""Curve25519 keys in the base64 text form that wg(8) prints and reads."""

import base64
import binascii
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEY_SIZE = 32


class InvalidKey(ValueError):
    """A key that is not 32 bytes of base64."""


def generate_private_key() -> bytes:
    # X25519PrivateKey clamps on use; wg clamps the stored form too, so do the same
    # to print byte-identical keys.
    raw = bytearray(os.urandom(KEY_SIZE))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return bytes(raw)


def generate_preshared_key() -> bytes:
    return os.urandom(KEY_SIZE)


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def encode(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode(text: str) -> bytes:
    """Parse a base64 key, refusing anything but exactly 32 bytes."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey("not valid base64") from None
    if len(raw) != KEY_SIZE:
        raise InvalidKey(f"must decode to {KEY_SIZE} bytes, got {len(raw)}")
    return raw
