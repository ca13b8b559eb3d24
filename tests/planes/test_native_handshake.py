"""The native plane's handshake worker (native/handshake.c) computes what
protocol/noise.py computes: for the same initiation, keys and ephemeral key,
the initiator's static key, its timestamp, the hash and chaining key after the
initiation, and the response's start, on wireguard-go's recorded initiation
and on random ones; and it refuses what noise.py refuses. Through the native
shell, initiations from many initiators are answered while a session carries
data, under load too (cookies, then mac2), and the event loop's thread runs
no X25519 for them."""

import contextlib
import ipaddress
import json
import select
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.core.reconfig import Applied
from tunnel.lab.handshakes import MAC1, MAC2, Pending, prepare, source_address, valid_response
from tunnel.planes import dp
from tunnel.protocol import crypto, keys
from tunnel.protocol.constants import MESSAGE_COOKIE_REPLY, MESSAGE_RESPONSE
from tunnel.protocol.cookie import CookieGenerator
from tunnel.protocol.messages import CookieReply, Initiation, parse
from tunnel.protocol.noise import (
    INITIAL_CHAINING_KEY,
    Handshake,
    HandshakeError,
    StaticIdentity,
    accept_initiation,
    consume_initiation,
    start_response,
)
from tunnel.protocol.peer_config import PeerConfig

from ..conftest import NATIVE_MISSING, ROOT, needs
from ..native_session import Session, confirmed_session, sends
from ..packets import ipv4_packet

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


# Through the native shell.

INITIATORS = 24  # two initiations each: under UNDER_LOAD_INITIATIONS_PER_SECOND


@contextlib.contextmanager
def no_x25519_here() -> Iterator[None]:
    """Any X25519 in this process (the event loop's thread of the shell, and the
    sans-IO peer's) fails the test while it lasts."""

    def refused(*args: object) -> None:
        raise AssertionError("X25519 on the event loop's thread")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(crypto, "dh", refused)
        mp.setattr(crypto, "private_key", refused)
        yield


def with_initiators(s: Session, n: int) -> list[bytes]:
    """n more peers of a, each with a /32 of its own; their private keys."""
    private_keys = [keys.generate_private_key() for _ in range(n)]
    added = [
        s.a.iface.add_peer(
            PeerConfig(
                keys.public_key(k),
                allowed_ips=[ipaddress.ip_network(f"10.1.0.{i + 1}/32")],
            )
        )
        for i, k in enumerate(private_keys)
    ]
    s.shell.reconfigured(Applied(added=added))
    return private_keys


def exchange(
    s: Session, socks: list[socket.socket], initiations: list[Pending], with_data: bool = True
) -> list[bytes]:
    """Send the initiations, each from its initiator's socket, with a packet of
    b's data after each (if `with_data`), run the shell as the event loop does until each is
    answered, and check that C delivered b's packets meanwhile: the answers, in
    the initiations' order. A cookie reply is answered as an initiator does, with
    the same initiation and mac2."""
    answers: dict[int, bytes] = {}
    by_sender = {int.from_bytes(p.packet[4:8], "little"): p for p in initiations}
    cookie_key = CookieGenerator(s.a.iface.identity.public_key).cookie_key
    for n, p in enumerate(initiations):
        socks[p.initiator].sendto(p.packet, s.a.address)
        if not with_data:
            continue
        packet = ipv4_packet("10.0.0.2", "10.0.0.1", n.to_bytes(4, "big"))
        (transport,) = sends(s.b.iface.send_packet(packet, s.net.now))
        s.udp_b.sendto(transport.data, s.a.address)
    deadline = time.monotonic() + 10
    while len(answers) < len(initiations):
        assert time.monotonic() < deadline, f"{len(answers)} of {len(initiations)} answered"
        ready = select.select([s.shell.ctrl, *socks], [], [], 0.1)[0]
        if s.shell.ctrl in ready:
            s.shell._upcalls()
        for sock in set(ready) - {s.shell.ctrl}:
            data = sock.recv(256)
            if data[0] == MESSAGE_RESPONSE:
                answers[int.from_bytes(data[8:12], "little")] = data
            elif data[0] == MESSAGE_COOKIE_REPLY:
                reply = parse(data)
                assert isinstance(reply, CookieReply)
                p = by_sender[reply.receiver]
                cookie = crypto.xaead_decrypt(
                    cookie_key, reply.nonce, reply.encrypted_cookie, p.packet[MAC1:MAC2]
                )
                sock.sendto(p.packet[:MAC2] + crypto.mac(cookie, p.packet[:MAC2]), s.a.address)
    for n in range(len(initiations) if with_data else 0):
        assert s.dev.recv(2048).endswith(n.to_bytes(4, "big"))
    return [answers[sender] for sender in by_sender]


@contextlib.contextmanager
def sockets(n: int) -> Iterator[list[socket.socket]]:
    """A UDP socket for each initiator, each from its own loopback address: the
    core limits each source under load."""
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in range(n)
        ]
        for k, sock in enumerate(socks):
            sock.bind((source_address(k), 0))
        yield socks


def answered_validly(initiations: list[Pending], answers: list[bytes]) -> bool:
    return all(valid_response(p, data) for p, data in zip(initiations, answers, strict=True))


def test_many_initiators_are_answered_beside_data_with_no_x25519_on_the_loop() -> None:
    with confirmed_session() as s, sockets(INITIATORS) as socks:
        private_keys = with_initiators(s, INITIATORS)
        rounds = prepare(private_keys, s.a.iface.identity.public_key, 2 * INITIATORS)
        answers = []
        with no_x25519_here():
            for half in (rounds[:INITIATORS], rounds[INITIATORS:]):
                answers += exchange(s, socks, half)
                time.sleep(0.05)  # each initiator's next one is not a flood (noise.c)
        assert answered_validly(rounds, answers)
        assert s.a.iface.cookie_replies_sent == 0
        peers = [s.a.iface.peers[keys.public_key(k)] for k in private_keys]
        # Each holds the session of its second handshake, unconfirmed, in C too.
        for peer, response in zip(peers, answers[INITIATORS:], strict=True):
            local_index = int.from_bytes(response[4:8], "little")
            assert peer.next is not None and peer.next.local_index == local_index
            assert s.shell.plane.slots(s.shell.ids[peer]).next == local_index


def test_under_load_cookies_then_mac2_are_answered_with_no_x25519_on_the_loop() -> None:
    """Past the threshold every initiation first gets a cookie reply; with mac2
    the core admits it and hands it back to C's worker."""
    with confirmed_session() as s, sockets(INITIATORS) as socks:
        s.a.iface.state.under_load_threshold = 2
        private_keys = with_initiators(s, INITIATORS)
        initiations = prepare(private_keys, s.a.iface.identity.public_key, INITIATORS)
        with no_x25519_here():
            answers = exchange(s, socks, initiations)
        assert answered_validly(initiations, answers)
        assert s.a.iface.cookie_replies_sent > 0


def test_after_a_new_private_key_the_same_initiators_are_answered_under_it() -> None:
    """C keeps each initiator's DH with our static key: a new key must not
    answer with the old one's."""
    with confirmed_session() as s, sockets(4) as socks:
        private_keys = with_initiators(s, 4)
        before = prepare(private_keys, s.a.iface.identity.public_key, 4)
        assert answered_validly(before, exchange(s, socks, before))
        s.shell.apply(s.a.iface.set_private_key(keys.generate_private_key()))
        s.shell.reconfigured(Applied())
        time.sleep(0.05)  # each initiator's next one is not a flood (noise.c)
        after = prepare(private_keys, s.a.iface.identity.public_key, 4)
        with no_x25519_here():  # b's session went with the old key: no data
            answers = exchange(s, socks, after, with_data=False)
        assert answered_validly(after, answers)
