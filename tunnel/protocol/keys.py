"""Curve25519 keys in the base64 text form that wg(8) prints and reads."""

import base64
import binascii
import os

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
    # Imported when called, so that `import tunnel.cli` does not load the crypto
    # stack: `pyvpn show` on a hub waits for every import, and never derives a key.
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


# The Curve25519 points of small order, as X25519 reads them (the top bit
# ignored): libsodium's has_small_order() list (crypto_scalarmult/curve25519/
# ref10/x25519_ref10.c): 0, 1, the two points of order 8, and p - 1, p, p + 1.
LOW_ORDER_POINTS = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def low_order(public: bytes) -> bool:
    """A public key with which every Diffie-Hellman gives the all-zero secret, so
    that no handshake with its owner can ever succeed. The kernel and wireguard-go
    accept such a peer, which then never handshakes; pyvpn refuses it where it is
    configured, naming it."""
    return public[:31] + bytes([public[31] & 0x7F]) in LOW_ORDER_POINTS


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
