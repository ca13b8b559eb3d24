"""The native plane's handshake worker (native/handshake.c) computes what
protocol/noise.py computes: for the same initiation, keys and ephemeral key,
the initiator's static key, its timestamp, the hash and chaining key after the
initiation, and the response's start, on wireguard-go's recorded initiation
and on random ones; and it refuses what noise.py refuses."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.planes import dp
from tunnel.protocol import crypto, keys
from tunnel.protocol.cookie import CookieGenerator
from tunnel.protocol.messages import Initiation, parse
from tunnel.protocol.noise import (
    INITIAL_CHAINING_KEY,
    Handshake,
    HandshakeError,
    StaticIdentity,
    accept_initiation,
    consume_initiation,
    start_response,
)

from ..conftest import NATIVE_MISSING, ROOT, needs

pytestmark = needs(NATIVE_MISSING)

VECTORS = json.loads((ROOT / "tests" / "vectors" / "wireguard_go.json").read_text())
KEYS = {k: bytes.fromhex(v) for k, v in VECTORS["keys"].items()}
# A point of order 8 on Curve25519 (the kernel's and wireguard-go's tests use it):
# every DH with it gives zeros.
LOW_ORDER = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")

# Zeros are no key at all (StaticIdentity).
keys32 = st.binary(min_size=32, max_size=32).filter(any)


def in_c(identity: StaticIdentity, initiation: bytes, ephemeral: bytes) -> dp.Consumed:
    return dp.consume_initiation(
        identity.private_key, INITIAL_CHAINING_KEY, identity.responder_hash, initiation, ephemeral
    )


def agree(identity: StaticIdentity, initiation: bytes, ephemeral: bytes) -> None:
    """C's results are noise.py's, field by field, or both refuse."""
    c = in_c(identity, initiation, ephemeral)
    msg = parse(initiation)
    assert isinstance(msg, Initiation)
    try:
        python = consume_initiation(identity, msg)
        start = start_response(
            python.hash, python.chaining_key, python.remote_ephemeral, python.remote_static,
            ephemeral,
        )  # fmt: skip
    except (HandshakeError, crypto.DecryptError):
        assert (c.consumed, c.start) == (None, None)
        return
    assert c.consumed == python
    assert c.start == start
    assert c.initiation == initiation and not c.admitted


def initiation(
    responder: bytes, initiator: bytes, ephemeral: bytes, timestamp: bytes, sender: int
) -> bytes:
    hs = Handshake(StaticIdentity(initiator), keys.public_key(responder))
    return hs.create_initiation(sender, ephemeral, timestamp).pack()


def test_wireguard_gos_initiation_is_consumed_as_noise_py_consumes_it() -> None:
    v = VECTORS["they_initiate"]
    identity = StaticIdentity(KEYS["ours"])
    c = in_c(identity, bytes.fromhex(v["initiation"]), KEYS["ephemeral_responder"])
    assert c.consumed is not None and c.start is not None
    assert c.consumed.remote_static == keys.public_key(KEYS["theirs"])
    assert c.consumed.timestamp.hex() == v["timestamp"]
    agree(identity, bytes.fromhex(v["initiation"]), KEYS["ephemeral_responder"])


def test_the_response_finished_from_cs_start_is_wireguard_gos() -> None:
    """What the core finishes from C's start is the response wireguard-go took."""
    v = VECTORS["they_initiate"]
    identity = StaticIdentity(KEYS["ours"])
    c = in_c(identity, bytes.fromhex(v["initiation"]), KEYS["ephemeral_responder"])
    assert c.consumed is not None and c.start is not None
    theirs = keys.public_key(KEYS["theirs"])
    hs = Handshake(identity, theirs, KEYS["psk"])
    accept_initiation(hs, c.consumed)
    response = hs.finish_response(0x55667788, c.start)
    assert CookieGenerator(theirs).add_macs(response.pack(), 0.0).hex() == v["response"]


@settings(max_examples=60, deadline=None)
@given(
    responder=keys32,
    initiator=keys32,
    ephemeral=keys32,
    response_ephemeral=keys32,
    timestamp=st.binary(min_size=12, max_size=12),
    sender=st.integers(0, 2**32 - 1),
)
def test_random_initiations_agree(
    responder: bytes,
    initiator: bytes,
    ephemeral: bytes,
    response_ephemeral: bytes,
    timestamp: bytes,
    sender: int,
) -> None:
    identity = StaticIdentity(responder)
    agree(
        identity, initiation(responder, initiator, ephemeral, timestamp, sender), response_ephemeral
    )


@settings(max_examples=60, deadline=None)
@given(
    responder=keys32,
    initiator=keys32,
    ephemeral=keys32,
    flip=st.integers(4 * 8, 148 * 8 - 1),  # past the header, which C checked
)
def test_tampered_initiations_are_refused_or_agree(
    responder: bytes, initiator: bytes, ephemeral: bytes, flip: int
) -> None:
    """A bit flipped anywhere after the header: refused by both where it is authenticated (the
    ephemeral key, the static key, the timestamp), the same results elsewhere."""
    data = bytearray(initiation(responder, initiator, ephemeral, bytes(12), 1))
    data[flip // 8] ^= 1 << flip % 8
    agree(StaticIdentity(responder), bytes(data), ephemeral)


def test_an_initiation_to_another_key_is_refused() -> None:
    data = initiation(KEYS["theirs"], KEYS["ours"], KEYS["ephemeral_initiator"], bytes(12), 1)
    c = in_c(StaticIdentity(KEYS["ours"]), data, KEYS["ephemeral_responder"])
    assert (c.consumed, c.start) == (None, None)


def test_a_low_order_ephemeral_key_is_refused() -> None:
    data = bytearray(
        initiation(KEYS["ours"], KEYS["theirs"], KEYS["ephemeral_initiator"], bytes(12), 1)
    )
    data[8:40] = LOW_ORDER
    agree(StaticIdentity(KEYS["ours"]), bytes(data), KEYS["ephemeral_responder"])
    assert (
        in_c(StaticIdentity(KEYS["ours"]), bytes(data), KEYS["ephemeral_responder"]).consumed
        is None
    )
