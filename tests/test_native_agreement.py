"""The native plane and the Python core agree: the same keys open the same
wireguard-go transport messages in both, both replay windows give the same
verdict on every counter sequence, and both allowed-IPs tables route every
address to the same peer after the same changes."""

import contextlib
import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.planes import dp
from tunnel.protocol import crypto, keys
from tunnel.protocol.allowed_ips import AllowedIPs, Network
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


# ---- the C plane's tables, on their own ----

PEER_IDS = (1, 2, 3)
peer_ids = st.sampled_from(PEER_IDS)


@contextlib.contextmanager
def native_plane(tap: bool) -> Iterator[dp.NativePlane]:
    """A C plane on a socketpair for its device, never started: only its tables are used."""
    with contextlib.ExitStack() as stack:
        dev, _ = (
            stack.enter_context(s) for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        )
        ctrl, _ = (
            stack.enter_context(s) for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        )
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sock.bind(("127.0.0.1", 0))
        plane = stack.enter_context(
            dp.NativePlane(dev.fileno(), sock.fileno(), ctrl.fileno(), tap=tap)
        )
        for peer_id in PEER_IDS:
            plane.add_peer(peer_id)
        yield plane


# ---- allowed IPs: tunnel/protocol/allowed_ips.py against native/allowedips.c ----

BITS = {4: 32, 6: 128}
NETWORK = {4: ipaddress.IPv4Network, 6: ipaddress.IPv6Network}
ADDRESS = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}
# A few addresses that prefixes of every length are cut from, so that they nest
# and overlap; and any address at all.
BASES = {
    4: [0x0A000001, 0x0A00FF02, 0xC0A80101],
    6: [0xFD00 << 112 | 1, 0xFD00 << 112 | 0xFF << 64 | 2, 0x2001_0DB8 << 96 | 3],
}


@st.composite
def networks(draw: st.DrawFn) -> Network:
    version = draw(st.sampled_from([4, 6]))
    bits = BITS[version]
    base = draw(st.sampled_from(BASES[version]) | st.integers(0, 2**bits - 1))
    length = draw(st.integers(0, bits))
    return NETWORK[version]((base >> (bits - length) << (bits - length), length))


class Routes:
    """The Python core's allowed IPs and C's, changed alike: C is told each peer's
    whole set as NativeShell._sync tells it, or a set of its own (`replace`)."""

    def __init__(self, plane: dp.NativePlane) -> None:
        self.python: AllowedIPs[int] = AllowedIPs()
        self.c = plane
        self.probes = {(v, b) for v, bases in BASES.items() for b in bases}

    def sync(self, peer_id: int) -> None:
        self.c.set_allowed_ips(peer_id, self.python.networks_of(peer_id))

    def insert(self, network: Network, peer_id: int) -> None:
        self.python.insert(network, peer_id)
        self.sync(peer_id)

    def remove(self, network: Network, peer_id: int) -> None:
        self.python.remove(network, peer_id)
        self.sync(peer_id)

    def replace(self, peer_id: int, networks: list[Network]) -> None:
        """`wg set … allowed-ips` (replace_allowed_ips): a new set, in the order given."""
        self.python.remove_owner(peer_id)
        for network in networks:
            self.python.insert(network, peer_id)
        self.c.set_allowed_ips(peer_id, networks)

    def remove_peer(self, peer_id: int) -> None:
        self.python.remove_owner(peer_id)
        self.c.remove_peer(peer_id)
        self.c.add_peer(peer_id)

    def lookups(self, touched: list[Network]) -> None:
        """Every prefix's first and last address and the ones beside them, and the
        bases: each goes to the same peer (or none) in both."""
        for net in touched:
            first, last = int(net.network_address), int(net.broadcast_address)
            top = 2 ** BITS[net.version] - 1
            self.probes |= {(net.version, a) for a in (first - 1, first, last, last + 1)}
            self.probes = {(v, a) for v, a in self.probes if 0 <= a <= top}
        for version, value in self.probes:
            address = ADDRESS[version](value).packed
            python = self.python.lookup(version, address)
            assert self.c.allowed_ips_owner(address) == python, ADDRESS[version](value)


route_operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), networks(), peer_ids),
        st.tuples(st.just("remove"), networks(), peer_ids),
        st.tuples(st.just("replace"), peer_ids, st.lists(networks(), max_size=4)),
        st.tuples(st.just("remove_peer"), peer_ids),
    ),
    max_size=30,
)


@settings(deadline=None)
@given(route_operations)
def test_native_and_python_allowed_ips_agree(operations):
    with native_plane(tap=False) as plane:
        routes = Routes(plane)
        for op, *args in operations:
            getattr(routes, op)(*args)
            touched = [a for a in args if isinstance(a, Network)] + next(
                (a for a in args if isinstance(a, list)), []
            )
            routes.lookups(touched)
