"""The whitepaper's primitives (section 5.4), each from a maintained library:
HASH/MAC/HMAC from hashlib's BLAKE2s, AEAD from `cryptography`, XAEAD from libsodium
(PyNaCl) because `cryptography` has no XChaCha20-Poly1305."""

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError


class DecryptError(Exception):
    """Authentication failed: the message was forged, corrupted or keyed wrongly."""


def hash_(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    # The one-shot form runs in C (OpenSSL's HMAC over BLAKE2s-256, the same
    # 64-byte block): a handshake takes some twenty of them.
    return hmac.digest(key, data, "blake2s")


def kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    """HKDF over HMAC-BLAKE2s giving n 32-byte outputs (whitepaper KDF_n)."""
    prk = hmac_(key, data)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = hmac_(prk, prev + bytes([i]))
        out.append(prev)
    return out


def private_key(private: bytes) -> X25519PrivateKey:
    """A private key ready for dh(): loading one costs as much as a DH itself
    (the public key is derived), so a key used more than once is loaded once."""
    return X25519PrivateKey.from_private_bytes(private)


def public_of(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def dh(private: bytes | X25519PrivateKey, public: bytes) -> bytes:
    priv = private if isinstance(private, X25519PrivateKey) else private_key(private)
    try:
        return priv.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # A low-order point gives an all-zero shared secret; the whitepaper rejects it.
        raise DecryptError("invalid public key") from None


# 32 zero bits, then the counter as 64 bits little-endian (whitepaper 5.4.6).
AEAD_NONCE = struct.Struct("<4xQ")
aead_nonce = AEAD_NONCE.pack

TransportCipher = ChaCha20Poly1305
# What a transport cipher raises for a message that does not authenticate.
TransportCipherError = InvalidTag


def transport_cipher(key: bytes | bytearray) -> TransportCipher:
    """ChaCha20-Poly1305 bound to one transport key, for every message of a
    keypair: binding a key costs as much as sealing a full packet. The object
    keeps no reference to `key`; it holds OpenSSL cipher contexts keyed with
    their own copy. Whoever holds it drops it when the key is erased, and
    OpenSSL's provider clears a context when it is freed."""
    return ChaCha20Poly1305(key)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(aead_nonce(counter), plaintext, aad or None)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(aead_nonce(counter), ciphertext, aad or None)
    except InvalidTag:
        raise DecryptError("authentication tag mismatch") from None


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)
    except CryptoError:
        raise DecryptError("authentication tag mismatch") from None
