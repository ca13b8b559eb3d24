"""Known-answer tests: each primitive against its RFC vector, and the whole
handshake and transport against bytes recorded from wireguard-go
(tests/vectors/record_wireguard_go.py; provenance in the JSON's "source")."""

import json

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunnel.core.l3 import parse_ip
from tunnel.protocol import crypto, keys
from tunnel.protocol.cookie import CookieGenerator
from tunnel.protocol.keypair import Keypair, pad
from tunnel.protocol.messages import Response, Transport, parse
from tunnel.protocol.noise import (
    Handshake,
    HandshakeError,
    StaticIdentity,
    accept_initiation,
    consume_initiation,
)

from ..conftest import ROOT

VECTORS = json.loads((ROOT / "tests" / "vectors" / "wireguard_go.json").read_text())
KEYS = {k: bytes.fromhex(v) for k, v in VECTORS["keys"].items()}
SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
    b"for the future, sunscreen would be it."
)


def test_blake2s_rfc7693_appendix_b():
    assert crypto.hash_(b"abc").hex() == (
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    )


def test_x25519_rfc7748_section_6_1():
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert keys.public_key(alice).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert crypto.dh(alice, bob_public).hex() == (
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    )


def test_x25519_rejects_low_order_point():
    with pytest.raises(crypto.DecryptError):
        crypto.dh(bytes(range(32)), bytes(32))


def test_chacha20poly1305_rfc8439_section_2_8_2():
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    sealed = ChaCha20Poly1305(key).encrypt(nonce, SUNSCREEN, aad)
    assert sealed[:16].hex() == "d31a8d34648e60db7b86afbc53ef7ec2"
    assert sealed[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"


def test_xchacha20poly1305_draft_irtf_cfrg_xchacha_a_3_1():
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(0x40, 0x58))
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    sealed = crypto.xaead_encrypt(key, nonce, SUNSCREEN, aad)
    assert sealed[:16].hex() == "bd6d179d3e83d43b9576579493c0e939"
    assert sealed[-16:].hex() == "c0875924c1c7987947deafd8780acf49"
    assert crypto.xaead_decrypt(key, nonce, sealed, aad) == SUNSCREEN


def test_aead_nonce_is_32_zero_bits_then_little_endian_counter():
    assert crypto.aead_nonce(0x0102030405060708).hex() == "000000000807060504030201"


def test_handshake_we_initiate_matches_wireguard_go():
    v = VECTORS["we_initiate"]
    theirs = keys.public_key(KEYS["theirs"])
    hs = Handshake(StaticIdentity(KEYS["ours"]), theirs, KEYS["psk"])
    initiation = hs.create_initiation(
        0x11223344, KEYS["ephemeral_initiator"], bytes.fromhex(v["timestamp"])
    )
    # Byte for byte what wireguard-go accepted, MACs included.
    assert CookieGenerator(theirs).add_macs(initiation.pack(), 0.0).hex() == v["initiation"]
    response = parse(bytes.fromhex(v["response"]))
    assert isinstance(response, Response) and response.receiver == 0x11223344
    hs.consume_response(response)
    keypair = Keypair(hs.derive_session(), 0.0)
    request = bytes.fromhex(v["plaintext_sent"])
    assert keypair.encrypt(pad(request, 1420), 0.0).hex() == v["transport_sent"]
    reply = keypair.decrypt(parse(bytes.fromhex(v["transport_received"])), 0.0)
    header = parse_ip(reply)
    assert header is not None and header[1:3] == (bytes([10, 99, 0, 2]), bytes([10, 99, 0, 1]))
    icmp = reply[20 : header[3]]
    assert icmp[0] == 0 and icmp[4:6] == b"\x51\x51" and icmp.endswith(b"pyvpn-vector")


def test_handshake_they_initiate_matches_wireguard_go():
    v = VECTORS["they_initiate"]
    me = StaticIdentity(KEYS["ours"])
    theirs = keys.public_key(KEYS["theirs"])
    consumed = consume_initiation(me, parse(bytes.fromhex(v["initiation"])))
    assert consumed.remote_static == theirs
    assert consumed.timestamp.hex() == v["timestamp"]
    hs = Handshake(me, theirs, KEYS["psk"])
    accept_initiation(hs, consumed)
    response = hs.create_response(0x55667788, KEYS["ephemeral_responder"])
    assert CookieGenerator(theirs).add_macs(response.pack(), 0.0).hex() == v["response"]
    keypair = Keypair(hs.derive_session(), 0.0)
    message = parse(bytes.fromhex(v["transport_received"]))
    assert isinstance(message, Transport)
    plaintext = keypair.decrypt(message, 0.0)
    assert plaintext is not None and plaintext.hex() == v["plaintext_received"]
    header = parse_ip(plaintext)
    assert header is not None and header[1] == bytes([10, 99, 0, 2])
    assert plaintext[20] == 8  # an ICMP echo request, from wireguard-go's side


def test_wrong_preshared_key_fails_against_wireguard_go_response():
    v = VECTORS["we_initiate"]
    theirs = keys.public_key(KEYS["theirs"])
    hs = Handshake(StaticIdentity(KEYS["ours"]), theirs, bytes(32))
    hs.create_initiation(0x11223344, KEYS["ephemeral_initiator"], bytes.fromhex(v["timestamp"]))
    with pytest.raises(HandshakeError):
        hs.consume_response(parse(bytes.fromhex(v["response"])))
