"""The native plane and the Python core agree: the same keys open the same
wireguard-go transport messages in both, both replay windows give the same
verdict on every counter sequence, both of tap's MAC tables give the same
answers to the same learning, binding, lookups, ageing and filling, and both
allowed-IPs tables route every address to the same peer after the same
changes."""

import contextlib
import ipaddress
import json
import socket
import time
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.core.l2 import Learned, MacTable
from tunnel.planes import dp
from tunnel.protocol import crypto, keys
from tunnel.protocol.allowed_ips import AllowedIPs, Network
from tunnel.protocol.constants import COUNTER_WINDOW_SIZE, MAC_TABLE_MAX
from tunnel.protocol.messages import Response, Transport, parse
from tunnel.protocol.noise import Handshake, StaticIdentity
from tunnel.protocol.replay import ReplayWindow

from ..conftest import ROOT

VECTORS = json.loads((ROOT / "tests" / "vectors" / "wireguard_go.json").read_text())
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


# ---- tap's learning switch: tunnel/core/l2.py MacTable against native/mactable.c ----

AGEING = 10  # seconds: C takes whole ones
QUARTER_NS = 250_000_000  # the tests' clock ticks in quarter seconds, exact in floats too
MACS = [bytes.fromhex(f"0200000000{i:02x}") for i in range(1, 6)]
GROUP_MAC = bytes.fromhex("01005e000001")


class Switches:
    """The Python MacTable and C's, given the same operations; every answer compared.
    Owners are C's peer ids on both sides."""

    def __init__(self, plane: dp.NativePlane) -> None:
        self.python: MacTable[int] = MacTable(ageing=AGEING)
        self.c = plane
        plane.set_mac_ageing(AGEING)
        # C's clock at the test's time 0: its own now, which configuration calls
        # such as dp_peer_set_allowed_macs read.
        self.epoch_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self.quarters = 0
        self.fresh = 0  # MAC addresses made up so far to fill the table

    @property
    def now(self) -> float:
        return self.quarters / 4

    @property
    def now_ns(self) -> int:
        return self.epoch_ns + self.quarters * QUARTER_NS

    def learn(self, mac: bytes, peer_id: int) -> Learned:
        python = self.python.learn(mac, peer_id, self.now)
        assert self.c.mac_learn_at(mac, peer_id, self.now_ns) is python, (mac.hex(), peer_id)
        return python

    def lookup(self, mac: bytes) -> None:
        assert self.c.mac_owner_at(mac, self.now_ns) == self.python.lookup(mac, self.now), mac.hex()

    def bind(self, peer_id: int, macs: list[bytes]) -> None:
        self.python.bind(peer_id, macs)
        self.c.set_allowed_macs(peer_id, macs)

    def forget(self, peer_id: int) -> None:
        self.python.forget_owner(peer_id)
        self.c.remove_peer(peer_id)  # C forgets a peer's addresses as it removes the peer
        self.c.add_peer(peer_id)

    def fill(self, peer_id: int) -> None:
        """Learn new addresses until the table is full."""
        for _ in range(MAC_TABLE_MAX + 1):
            self.fresh += 1
            if (
                self.learn(b"\x02\xff" + self.fresh.to_bytes(4, "big"), peer_id)
                is Learned.TABLE_FULL
            ):
                return

    def entries(self) -> None:
        """The learned entries, as `pyvpn show` lists them on each plane."""
        python = sorted(
            (m, owner, round(age * 1000)) for m, owner, age in self.python.entries(self.now)
        )
        c = sorted(
            (e.mac, e.peer_id, round(e.age * 1000)) for e in self.c.mac_table_at(self.now_ns)
        )
        assert c == python


switch_operation = st.one_of(
    st.tuples(st.just("learn"), st.sampled_from([*MACS, GROUP_MAC]), peer_ids),
    st.tuples(st.just("lookup"), st.sampled_from(MACS)),
    st.tuples(st.just("bind"), peer_ids, st.lists(st.sampled_from(MACS), max_size=3, unique=True)),
    st.tuples(st.just("forget"), peer_ids),
    # Ageing's edges: an entry just fresh, just expired.
    st.tuples(st.just("wait"), st.sampled_from([1, 4, 4 * AGEING - 1, 4 * AGEING, 4 * AGEING + 1])),
)


def run(switches: Switches, operations: list[tuple], every_step: bool) -> None:
    for op, *args in operations:
        if op == "wait":
            switches.quarters += args[0]
        else:
            getattr(switches, op)(*args)
        for mac in MACS:
            switches.lookup(mac)
        if every_step:
            switches.entries()
    switches.entries()


@settings(deadline=None)
@given(st.lists(switch_operation, max_size=40))
def test_native_and_python_mac_tables_agree(operations):
    with native_plane(tap=True) as plane:
        run(Switches(plane), operations, every_step=True)


@settings(deadline=None, max_examples=40)
@given(st.lists(st.one_of(st.tuples(st.just("fill"), peer_ids), switch_operation), max_size=12))
def test_native_and_python_mac_tables_agree_when_full(operations):
    """MAC_TABLE_MAX learned addresses, the real cap: a listing of thousands per step
    would be slow, so the whole table is compared at the end, lookups at every step."""
    with native_plane(tap=True) as plane:
        run(Switches(plane), operations, every_step=False)


def test_an_address_a_peer_may_no_longer_send_from_is_free_at_once():
    """Dropped from a peer's allowed_macs, or learned off a list it now has: in
    neither table does the address stay the peer's until it ages out."""
    with native_plane(tap=True) as plane:
        switches = Switches(plane)
        switches.bind(1, [MACS[0]])
        switches.learn(MACS[1], 2)
        switches.bind(1, [])  # unbound
        switches.bind(2, [MACS[2]])  # MACS[1] is not in 2's list
        for mac in MACS[:2]:
            switches.lookup(mac)
            assert switches.python.lookup(mac, switches.now) is None  # frames to it flood
            assert switches.learn(mac, 3) is Learned.YES  # another peer's host at once
        switches.entries()


def test_bound_macs_leave_the_whole_cap_to_learned_ones():
    with native_plane(tap=True) as plane:
        switches = Switches(plane)
        switches.bind(1, MACS[:3])
        switches.fill(2)
        assert switches.fresh == MAC_TABLE_MAX + 1  # the one after MAC_TABLE_MAX is refused
        assert len(plane.mac_table_at(switches.now_ns)) == MAC_TABLE_MAX
        switches.entries()
        for mac in MACS[:3]:
            switches.lookup(mac)  # still bound to 1


def test_a_full_table_makes_room_from_any_expired_entry():
    """Full with fresh entries but one, which has expired: both tables learn a new
    address in its place, wherever C hashes it."""
    with native_plane(tap=True) as plane:
        switches = Switches(plane)
        switches.learn(MACS[0], 1)
        switches.quarters += 4 * AGEING - 1
        switches.fill(2)
        switches.quarters += 1  # MACS[0] has expired, the rest are fresh
        assert switches.learn(MACS[1], 3) is Learned.YES
        assert switches.learn(MACS[2], 3) is Learned.TABLE_FULL
        switches.entries()


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
