"""The native plane and the Python core agree: the same keys open the same
wireguard-go transport messages in both, and both replay windows give the same
verdict on every counter sequence."""

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tunnel.planes import dp
from tunnel.protocol import crypto, keys
from tunnel.protocol.constants import COUNTER_WINDOW_SIZE
from tunnel.protocol.messages import Response, Transport, parse
from tunnel.protocol.noise import Handshake, StaticIdentity
from tunnel.protocol.replay import ReplayWindow

VECTORS = json.loads((Path(__file__).parent / "vectors" / "wireguard_go.json").read_text())
KEYS = {k: bytes.fromhex(v) for k, v in VECTORS["keys"].items()}


def session_from_wireguard_go():
    v = VECTORS["we_initiate"]
    hs = Handshake(StaticIdentity(KEYS["ours"]), keys.public_key(KEYS["theirs"]), KEYS["psk"])
    hs.create_initiation(0x11223344, KEYS["ephemeral_initiator"], bytes.fromhex(v["timestamp"]))
    response = parse(bytes.fromhex(v["response"]))
    assert isinstance(response, Response)
    hs.consume_response(response)
    return hs.derive_session(), v


def test_native_aead_opens_and_seals_wireguard_go_transport_like_python():
    session, v = session_from_wireguard_go()
    received = parse(bytes.fromhex(v["transport_received"]))
    assert isinstance(received, Transport)
    nonce = crypto.aead_nonce(received.counter)
    python = crypto.aead_decrypt(
        session.receive_key, received.counter, received.encrypted_packet, b""
    )
    assert dp.aead_open(session.receive_key, nonce, b"", received.encrypted_packet) == python
    sent = parse(bytes.fromhex(v["transport_sent"]))
    assert isinstance(sent, Transport)
    plaintext = crypto.aead_decrypt(session.send_key, sent.counter, sent.encrypted_packet, b"")
    sealed = dp.aead_seal(session.send_key, crypto.aead_nonce(sent.counter), b"", plaintext)
    assert sealed == sent.encrypted_packet  # byte for byte what wireguard-go accepted


def test_native_aead_rejects_a_flipped_bit():
    session, v = session_from_wireguard_go()
    received = parse(bytes.fromhex(v["transport_received"]))
    assert isinstance(received, Transport)
    forged = bytearray(received.encrypted_packet)
    forged[5] ^= 0x20
    nonce = crypto.aead_nonce(received.counter)
    assert dp.aead_open(session.receive_key, nonce, b"", bytes(forged)) is None


@given(st.lists(st.integers(min_value=0, max_value=3 * COUNTER_WINDOW_SIZE), max_size=300))
def test_native_and_python_replay_windows_agree(counters):
    python, c = ReplayWindow(), dp.ReplayWindow()
    assert [python.accept(n) for n in counters] == [c.check(n) for n in counters]


def test_windows_have_the_same_width():
    assert dp.ReplayWindow.window_size() == ReplayWindow().size == COUNTER_WINDOW_SIZE
