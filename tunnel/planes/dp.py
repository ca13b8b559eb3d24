"""Thin Python face of the native data plane (native/, built as ``tunnel.planes._native``).

The C plane moves WireGuard transport messages in its own threads; Python keeps
the handshake, the timers and every key decision.  This module only converts
Python values to the C API of native/dp.h and back, and raises OSError for the
negative errno values that API returns.  It holds no protocol logic: which
keypair goes into which slot, when to handshake, what to do with an upcall is
the caller's business.

Addresses are plain ``(host, port)`` pairs as the rest of pyvpn uses them
(see udp.from_sockaddr): an IPv4 peer reached through a dual-stack socket is
reported as ``"192.0.2.1"``, not as ``"::ffff:192.0.2.1"``.
"""

from __future__ import annotations

import enum
import errno
import functools
import ipaddress
import operator
import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, TypeVar

from tunnel.core.l2 import Learned
from tunnel.host.udp import ADDRESS_CACHE
from tunnel.protocol.constants import (
    HASH_SIZE,
    INITIATION_SIZE,
    KEY_SIZE,
    MAC_TABLE_MAX,
    TIMESTAMP_SIZE,
)
from tunnel.protocol.noise import ConsumedInitiation, ResponseStart

try:  # the extension is optional: pyvpn falls back to the Python plane
    from tunnel.planes._native import ffi, lib

    _IMPORT_ERROR: Exception | None = None
except ImportError as e:  # pragma: no cover - depends on the build
    ffi = lib = None
    _IMPORT_ERROR = e

# /dev/net/tun open flags the native plane wants on top of IFF_TUN/IFF_TAP |
# IFF_NO_PI: IFF_VNET_HDR lets the kernel hand over 64 KiB TSO super-packets
# and take coalesced ones back (<linux/if_tun.h>).
IFF_VNET_HDR = 0x4000

T = TypeVar("T")

# dp.h's values, which tests/planes/test_shared_constants.py holds these to:
# Python needs them where the extension may not be built.
SLOT_CURRENT, SLOT_PREVIOUS, SLOT_NEXT = 0, 1, 2
CHANGED_BATCH = 1024  # peers' stats per dp_changed_peer_stats call
VNET_HDR_LEN = 10  # DP_VNET_HDR_LEN, sizeof(struct virtio_net_hdr)

UPCALL_HEADER = struct.Struct("<BBHI16s")  # kind, family, port (BE, see below), peer_id, addr
# struct dp_consumed_initiation: status, admitted, then remote_static, timestamp,
# hash, chaining_key, response_ephemeral, response_hash, response_chaining_key.
CONSUMED_INITIATION = struct.Struct(
    f"<BB2x{KEY_SIZE}s{TIMESTAMP_SIZE}s{HASH_SIZE}s{HASH_SIZE}s{KEY_SIZE}s{HASH_SIZE}s{HASH_SIZE}s"
)
INITIATION_CONSUMED = 0  # DP_INITIATION_CONSUMED; DP_INITIATION_REFUSED otherwise


class NativeUnavailable(RuntimeError):
    """The C extension is not built (``pip install -e .`` builds it)."""


def available() -> bool:
    """True when ``tunnel.planes._native`` imports, so datapath="auto" can pick native."""
    return lib is not None


def device_open_flags(tap: bool = False) -> int:
    """Extra TUNSETIFF flags to OR in when opening the device for this plane.

    Both tun and tap are opened with IFF_VNET_HDR: the plane segments and
    coalesces in either mode.  Pass ``vnet_hdr=True`` to NativePlane then.
    """
    return IFF_VNET_HDR


def _require() -> Any:
    if lib is None:
        raise NativeUnavailable(
            "pyvpn's native data plane is not built (tunnel.planes._native failed to import: "
            f"{_IMPORT_ERROR}); run `pip install -e .` with gcc and libssl-dev installed, "
            'or set datapath = "python"'
        )
    return lib


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


class UpcallKind(enum.IntEnum):
    DATAGRAM = 1  # a UDP datagram the plane does not handle (handshakes, other mode, junk)
    NEED_KEY = 2  # no payload: packets wait in C for a peer without a usable CURRENT
    KEYPAIR_CONFIRMED = 3  # NEXT was used by the peer and is now CURRENT
    ENDPOINT_CHANGED = 4  # roaming: authenticated traffic from a new address
    TOO_BIG = 5  # tap: an oversized device read for Python's PMTU answer (tunnel/core/l2.py)
    UNROUTED = 6  # tun: a packet no peer takes, for Python's ICMP answer (tunnel/core/l3.py)
    EVENTS = 7  # no payload: the peer has transport events for the timers (take_events)
    INITIATION = 8  # an initiation the handshake worker consumed (parse_consumed)


@dataclass(frozen=True)
class Upcall:
    kind: UpcallKind
    peer_id: int
    address: tuple[str, int] | None
    payload: bytes


# Memoized as the Python plane's conversions are (host/udp.py): every upcall and
# every peer's stats carry an address, mostly one seen before.
@functools.lru_cache(maxsize=ADDRESS_CACHE)
def _address(family: int, port: int, raw: bytes) -> tuple[str, int] | None:
    if family == socket.AF_INET:
        return (str(ipaddress.IPv4Address(raw[:4])), port)
    if family == socket.AF_INET6:
        ip = ipaddress.IPv6Address(raw[:16])
        return (str(ip.ipv4_mapped or ip), port)
    return None


def parse_upcall(data: bytes) -> Upcall:
    """Decode one control-socket message (native/dp.h struct dp_upcall_hdr + payload)."""
    if len(data) < UPCALL_HEADER.size:
        raise ValueError(f"upcall too short: {len(data)} bytes")
    kind, family, port_be, peer_id, addr = UPCALL_HEADER.unpack_from(data)
    port = socket.ntohs(port_be)
    return Upcall(
        UpcallKind(kind), peer_id, _address(family, port, addr), bytes(data[UPCALL_HEADER.size :])
    )


@dataclass(frozen=True)
class Consumed:
    """A DP_UPCALL_INITIATION's payload: the initiation, and what the handshake
    worker made of it (None, None: it did not authenticate)."""

    initiation: bytes
    consumed: ConsumedInitiation | None
    start: ResponseStart | None
    admitted: bool


def parse_consumed(payload: bytes) -> Consumed:
    status, admitted, static, timestamp, h, c, ephemeral, response_h, response_c = (
        CONSUMED_INITIATION.unpack_from(payload)
    )
    initiation = payload[CONSUMED_INITIATION.size :]
    if status != INITIATION_CONSUMED:
        return Consumed(initiation, None, None, bool(admitted))
    # The initiation's sender index and ephemeral key (whitepaper 5.4.2).
    sender = int.from_bytes(initiation[4:8], "little")
    remote_ephemeral = initiation[8 : 8 + KEY_SIZE]
    return Consumed(
        initiation,
        ConsumedInitiation(static, remote_ephemeral, sender, timestamp, h, c),
        ResponseStart(ephemeral, response_h, response_c),
        bool(admitted),
    )


def _sockaddr(address: tuple[str, int]) -> bytes:
    host, port = address
    host, _, scope = str(host).partition("%")
    # A scope named by its interface is looked up at each use, never memoized: a
    # recreated interface has a new index. Link-local endpoints are rare.
    scope_id = socket.if_nametoindex(scope) if scope and not scope.isdigit() else int(scope or 0)
    return _sockaddr_of(host, port, scope_id)


@functools.lru_cache(maxsize=ADDRESS_CACHE)  # a handshake's endpoint, mostly known
def _sockaddr_of(host: str, port: int, scope_id: int) -> bytes:
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s", port, ip.packed) + bytes(8)
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI16s", port, 0, ip.packed)
        + struct.pack("=I", scope_id)
    )


def _from_sockaddr(raw: bytes) -> tuple[str, int] | None:
    if len(raw) < 8:
        return None
    (family,) = struct.unpack_from("=H", raw)
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET:
        return _address(family, port, raw[4:8])
    if family == socket.AF_INET6 and len(raw) >= 24:
        return _address(family, port, raw[8:24])
    return None


@dataclass(frozen=True)
class PeerStats:
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    last_tx_ns: int  # CLOCK_BOOTTIME (tunnel/host/clock.py), 0 = never
    last_tx_data_ns: int
    last_rx_ns: int
    last_rx_data_ns: int
    current_send_counter: int
    current_age_ns: int
    has_current: bool
    current_local_index: int
    has_previous: bool
    has_next: bool
    previous_local_index: int
    next_local_index: int
    endpoint: tuple[str, int] | None
    drop_bad_tag: int
    drop_replay: int
    drop_bad_source: int
    drop_no_keypair: int  # includes packets staged for want of a keypair
    drop_expired_keypair: int
    drop_malformed: int
    rx_data_packets: int  # of rx_packets, those not keepalives
    staged_packets: int  # waiting in C for a usable CURRENT
    staged_overflow: int  # dropped from a full staged queue, the oldest first


@dataclass(frozen=True)
class PeerEvents:
    """A peer's transport messages since they were last taken (dp_peer_take_events),
    and the endpoint they came from."""

    tx_bytes: int
    tx_data_messages: int
    last_tx_ns: int  # CLOCK_BOOTTIME; 0: none
    rx_bytes: int
    rx_data_messages: int
    last_rx_ns: int
    endpoint: tuple[str, int] | None


class Slots(NamedTuple):
    """Which keypairs C holds, by local index (None: the slot is empty), and the
    current one's send counter: what the core adopts after every change."""

    current: int | None
    previous: int | None
    next: int | None
    current_send_counter: int


def slots_of(st: Any) -> Slots:
    """A dp_peer_stats struct's or a PeerStats' slots: the fields have the same names."""
    return Slots(
        st.current_local_index if st.has_current else None,
        st.previous_local_index if st.has_previous else None,
        st.next_local_index if st.has_next else None,
        st.current_send_counter,
    )


@dataclass(frozen=True)
class InterfaceStats:
    rx_unknown_index: int
    rx_malformed: int
    tx_no_route: int
    tx_malformed: int
    tx_send_errors: int
    upcalls_sent: int
    upcalls_dropped: int
    dev_write_errors: int
    tx_super_packets: int  # TSO/USO super-packets read from the device and split
    rx_coalesced: int  # GRO super-packets written to the device
    rx_ratelimited: int  # datagrams over their source's share while Python was behind
    rx_bad_mac1: int  # handshake messages with a wrong mac1, dropped in C
    rx_mac_table_full: int  # tap frames whose source MAC went unlearned: the table is full
    udp_gso: bool
    udp_gro: bool
    tun_offload: int  # TUN_F_* bits accepted by TUNSETOFFLOAD
    workers: int
    crypto_workers: int


def _endpoint(st: Any) -> tuple[str, int] | None:
    ep = ffi.buffer(ffi.addressof(st, "endpoint"), st.endpoint_len)[:]
    return _from_sockaddr(ep) if st.endpoint_len else None


def _peer_stats(st: Any) -> PeerStats:
    return _from_struct(PeerStats, st, endpoint=_endpoint(st))


def _from_struct(cls: type[T], st: Any, **given: Any) -> T:
    """A stats dataclass from the dp.h struct whose fields have the same names
    (C's uint32_t flags become bools), with `given` for those that need more."""
    read, flags, names = _struct_reader(cls, tuple(given))
    values = dict(zip(names, read(st), strict=True), **given)
    for name in flags:
        values[name] = bool(values[name])
    return cls(**values)


@functools.cache
def _struct_reader(
    cls: type, given: tuple[str, ...]
) -> tuple[Callable[[Any], tuple[Any, ...]], tuple[str, ...], tuple[str, ...]]:
    """One attrgetter for the fields the struct gives (a hub's refresh reads
    thousands of these), the bool ones among them, and their names."""
    # f.type is the annotation's text under `from __future__ import annotations`.
    names = tuple(f.name for f in fields(cls) if f.name not in given)
    flags = tuple(f.name for f in fields(cls) if f.name in names and f.type in (bool, "bool"))
    read = operator.attrgetter(*names)
    return read, flags, names


@dataclass(frozen=True)
class MacEntry:
    mac: bytes
    peer_id: int
    age: float  # seconds since last seen in an authenticated frame


class NativePlane:
    """Owns one ``dp_t``: the fds stay Python's (the plane never closes them)."""

    def __init__(
        self,
        dev_fd: int,
        udp_fd: int,
        ctrl_fd: int,
        *,
        tap: bool = False,
        vnet_hdr: bool = False,
        mtu: int = 1420,
    ) -> None:
        native = _require()
        flags = (native.DP_TAP if tap else 0) | (native.DP_VNET_HDR if vnet_hdr else 0)
        ffi.errno = 0
        handle = native.dp_create(dev_fd, udp_fd, ctrl_fd, flags, mtu)
        if handle == ffi.NULL:
            err = ffi.errno or errno.EINVAL
            raise OSError(err, f"native plane: dp_create: {os.strerror(err)}")
        self._dp = handle
        self.tap = tap

    @classmethod
    def create(
        cls, dev_fd: int, udp_fd: int, ctrl_fd: int, tap: bool, vnet_hdr: bool, mtu: int
    ) -> NativePlane:
        return cls(dev_fd, udp_fd, ctrl_fd, tap=tap, vnet_hdr=vnet_hdr, mtu=mtu)

    def _handle(self) -> Any:
        if self._dp is None:
            raise ValueError("native plane is closed")
        return self._dp

    def start(self, workers: int = 1, crypto_workers: int = 0) -> None:
        """Spawn ``workers`` I/O threads, each serving both directions (device to
        UDP and UDP to device) from one poll loop, and ``crypto_workers`` threads
        that seal and open for them (0: the I/O threads do).

        One I/O thread keeps per-flow order, with any number of crypto workers
        (each peer's packets leave in the order they were read); more I/O
        threads share the same fds and may reorder packets (the replay window
        tolerates it, TCP throughput suffers)."""
        _check(lib.dp_start(self._handle(), workers, crypto_workers), "dp_start")

    def stop(self) -> None:
        if self._dp is not None:
            lib.dp_stop(self._dp)

    def udp_replaced(self) -> None:
        """After a new socket was dup2()ed onto the UDP fd, while stopped."""
        _check(lib.dp_udp_replaced(self._handle()), "dp_udp_replaced")

    def close(self) -> None:
        if self._dp is not None:
            lib.dp_destroy(self._dp)
            self._dp = None

    def __enter__(self) -> NativePlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_dp", None) is not None and lib is not None:
            self.close()

    # peers and routing
    def add_peer(self, peer_id: int) -> None:
        _check(lib.dp_peer_add(self._handle(), peer_id), "add_peer")

    def remove_peer(self, peer_id: int) -> None:
        _check(lib.dp_peer_remove(self._handle(), peer_id), "remove_peer")

    def set_endpoint(self, peer_id: int, address: tuple[str, int]) -> None:
        raw = _sockaddr(address)
        buf = ffi.from_buffer(raw)
        _check(
            lib.dp_peer_set_endpoint(
                self._handle(), peer_id, ffi.cast("struct sockaddr *", buf), len(raw)
            ),
            "set_endpoint",
        )

    def set_allowed_ips(
        self, peer_id: int, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network | str]
    ) -> None:
        """The peer's allowed IPs become exactly these, in one step (dp.h)."""
        nets = [ipaddress.ip_network(n, strict=False) for n in networks]
        prefixes = ffi.new("struct dp_prefix[]", len(nets))
        for i, net in enumerate(nets):
            prefix = prefixes[i]
            prefix.family = socket.AF_INET if net.version == 4 else socket.AF_INET6
            packed = net.network_address.packed
            ffi.memmove(prefix.addr, packed, len(packed))
            prefix.cidr = net.prefixlen
        _check(
            lib.dp_allowed_ips_set(self._handle(), peer_id, prefixes, len(nets)),
            "set_allowed_ips",
        )

    def set_allowed_macs(self, peer_id: int, macs: Iterable[bytes]) -> None:
        """tap: the peer may send only from these MAC addresses, bound to it (dp.h)."""
        raw = b"".join(macs)
        if len(raw) % 6:
            raise ValueError("MAC addresses are 6 bytes")
        _check(
            lib.dp_peer_set_allowed_macs(self._handle(), peer_id, raw, len(raw) // 6),
            "set_allowed_macs",
        )

    # keypairs (Python decides; the plane only holds them)
    def install_keypair(
        self,
        peer_id: int,
        initiator: bool,
        local_index: int,
        remote_index: int,
        send_key: bytes | bytearray,
        recv_key: bytes | bytearray,
    ) -> None:
        """The kernel's add_new_keypair() slot shuffle, atomically (see dp.h)."""
        _keys(send_key, recv_key)
        _check(
            lib.dp_keypair_install(
                self._handle(),
                peer_id,
                int(initiator),
                local_index,
                remote_index,
                ffi.from_buffer(send_key),
                ffi.from_buffer(recv_key),
            ),
            "install_keypair",
        )

    def clear_keypair(self, peer_id: int, slot: int) -> None:
        _check(lib.dp_keypair_clear(self._handle(), peer_id, slot), "clear_keypair")

    def send_packet(self, peer_id: int, packet: bytes) -> None:
        """Encrypt with CURRENT and send, behind what C has staged for the peer;
        b"" is a keepalive, sent only if nothing staged goes instead.

        Raises OSError(ENOKEY) when there is no usable CURRENT keypair (C stages
        the packet: handshake), OSError(EDESTADDRREQ) without an endpoint.
        """
        _check(lib.dp_send_packet(self._handle(), peer_id, packet, len(packet)), "send_packet")

    def purge_staged(self, peer_id: int) -> None:
        """Drop what C has staged for the peer (its handshake was given up)."""
        _check(lib.dp_peer_purge_staged(self._handle(), peer_id), "purge_staged")

    def transmit_frame(self, data: bytes) -> None:
        """tap: hand back a TOO_BIG upcall's payload (a device read) that Python
        does not answer: C switches, segments and sends it (dp.h)."""
        _check(lib.dp_transmit_frame(self._handle(), data, len(data)), "transmit_frame")

    # observation
    def stats(self, peer_id: int) -> PeerStats:
        st = ffi.new("struct dp_peer_stats *")
        _check(lib.dp_peer_stats(self._handle(), peer_id, st), "stats")
        return _peer_stats(st)

    def take_events(self, peer_id: int) -> PeerEvents:
        """The peer's transport events since they were last taken (dp.h)."""
        ev = ffi.new("struct dp_peer_events *")
        _check(lib.dp_peer_take_events(self._handle(), peer_id, ev), "take_events")
        return _from_struct(PeerEvents, ev, endpoint=_endpoint(ev))

    def slots(self, peer_id: int) -> Slots:
        """The peer's slots alone, without the rest of its stats: read after every
        keypair install, so a hub's handshakes pay for no more."""
        st = ffi.new("struct dp_peer_stats *")
        _check(lib.dp_peer_stats(self._handle(), peer_id, st), "stats")
        return slots_of(st)

    def changed_stats(self, max_peers: int = CHANGED_BATCH) -> list[tuple[int, PeerStats]]:
        """The peers whose stats moved since they were last reported here, and
        their stats (dp_changed_peer_stats); all of them, in batches."""
        ids = ffi.new("uint32_t[]", max_peers)
        out = ffi.new("struct dp_peer_stats[]", max_peers)
        changed: list[tuple[int, PeerStats]] = []
        while True:
            n = _check(lib.dp_changed_peer_stats(self._handle(), ids, out, max_peers), "stats")
            changed += [(ids[i], _peer_stats(out[i])) for i in range(n)]
            if n < max_peers:
                return changed

    def interface_stats(self) -> InterfaceStats:
        st = ffi.new("struct dp_if_stats *")
        lib.dp_if_stats(self._handle(), st)
        return _from_struct(InterfaceStats, st)

    def mac_table(self, max_entries: int = MAC_TABLE_MAX) -> list[MacEntry]:
        """The learned entries (an address in a peer's allowed_macs is not one)."""
        out = ffi.new("struct dp_mac_entry[]", max_entries)
        return _mac_entries(out, lib.dp_mac_table(self._handle(), out, max_entries))

    def mac_owner(self, mac: bytes) -> int | None:
        """The id of the peer a learned MAC address sits behind, if it has not aged out."""
        peer_id = ffi.new("uint32_t *")
        return peer_id[0] if lib.dp_mac_owner(self._handle(), mac, peer_id) else None

    # Test hooks: tap's switch at a time the caller gives (CLOCK_BOOTTIME ns), as
    # the workers use it, and the allowed IPs as they route a packet.
    def mac_learn_at(self, mac: bytes, peer_id: int, now_ns: int) -> Learned:
        answer = lib.dp_test_mac_learn(self._handle(), mac, peer_id, now_ns)
        return {
            lib.DP_MAC_LEARNED: Learned.YES,
            lib.DP_MAC_HELD_BY_OTHER: Learned.HELD_BY_OTHER,
            lib.DP_MAC_TABLE_FULL: Learned.TABLE_FULL,
        }[answer]

    def mac_owner_at(self, mac: bytes, now_ns: int) -> int | None:
        peer_id = ffi.new("uint32_t *")
        found = lib.dp_test_mac_owner_at(self._handle(), mac, now_ns, peer_id)
        return peer_id[0] if found else None

    def mac_table_at(self, now_ns: int, max_entries: int = MAC_TABLE_MAX) -> list[MacEntry]:
        out = ffi.new("struct dp_mac_entry[]", max_entries)
        return _mac_entries(out, lib.dp_test_mac_table_at(self._handle(), now_ns, out, max_entries))

    def allowed_ips_owner(self, address: bytes) -> int | None:
        """The id of the peer whose allowed IPs hold the IPv4 or IPv6 address."""
        family = socket.AF_INET if len(address) == 4 else socket.AF_INET6
        peer_id = ffi.new("uint32_t *")
        found = lib.dp_test_allowed_ips_lookup(self._handle(), family, address, peer_id)
        return peer_id[0] if _check(found, "allowed_ips_lookup") else None

    def set_mtu(self, mtu: int) -> None:
        """The device's new MTU (native/dp.h dp_set_mtu); OSError(EINVAL) if refused."""
        _check(lib.dp_set_mtu(self._handle(), mtu), "dp_set_mtu")

    def set_mac_ageing(self, seconds: int) -> None:
        lib.dp_set_mac_ageing(self._handle(), seconds)

    def usable_at(self, peer_id: int, offset_ns: int) -> int:
        """0 or a negative errno: may CURRENT send `offset_ns` after its birth (a test hook)."""
        return int(lib.dp_test_usable_at(self._handle(), peer_id, offset_ns))

    def set_send_counter(self, peer_id: int, counter: int) -> None:
        """The next counter CURRENT sends with (a test hook: the message limits)."""
        _check(lib.dp_test_set_send_counter(self._handle(), peer_id, counter), "set_send_counter")

    def cached_keys(self) -> int:
        """How many of the workers' AEAD contexts hold a key (a test hook)."""
        return int(lib.dp_test_cached_keys(self._handle()))

    def set_mac1_key(self, key: bytes) -> None:
        """HASH(LABEL_MAC1 || our public key): C drops handshakes with a wrong mac1."""
        if len(key) != 32:
            raise ValueError("the mac1 key is 32 bytes")
        lib.dp_set_mac1_key(self._handle(), key)

    def set_static_key(self, private_key: bytes, chaining_key: bytes, hash_: bytes) -> None:
        """The handshake worker's key and starting point (zeros: no worker)."""
        _keys(private_key, chaining_key, hash_)
        lib.dp_set_static_key(self._handle(), private_key, chaining_key, hash_)

    def set_under_load(self, until_ns: int) -> None:
        """Until then (CLOCK_BOOTTIME ns) initiations come up for the DoS checks first."""
        lib.dp_set_under_load(self._handle(), until_ns)

    def submit_handshake(self, initiation: bytes, source: tuple[str, int]) -> None:
        """An initiation Python admitted, for the worker (dp.h): OSError if refused."""
        raw = _sockaddr(source)
        sa = ffi.cast("struct sockaddr *", ffi.from_buffer(raw))
        _check(
            lib.dp_handshake_submit(self._handle(), initiation, len(initiation), sa, len(raw)),
            "submit_handshake",
        )


def _mac_entries(out: Any, n: int) -> list[MacEntry]:
    return [MacEntry(bytes(out[i].mac), out[i].peer_id, out[i].age_ms / 1000) for i in range(n)]


def _keys(*keys: bytes) -> None:
    for k in keys:
        if len(k) != 32:
            raise ValueError("session keys are 32 bytes")


# Test hooks: the handshake worker's steps, the C AEAD and replay window, for
# known-answer and differential tests.
def consume_initiation(
    private_key: bytes, chaining_key: bytes, hash_: bytes, initiation: bytes, ephemeral: bytes
) -> Consumed:
    """The handshake worker's steps on one initiation, the response's ephemeral
    private key given (dp_test_consume_initiation)."""
    _keys(private_key, chaining_key, hash_, ephemeral)
    if len(initiation) != INITIATION_SIZE:
        raise ValueError("an initiation is 148 bytes")
    out = ffi.new("struct dp_consumed_initiation *")
    _check(
        _require().dp_test_consume_initiation(
            private_key, chaining_key, hash_, initiation, ephemeral, out
        ),
        "consume_initiation",
    )
    return parse_consumed(bytes(ffi.buffer(out)) + initiation)


def aead_seal(key: bytes | bytearray, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
    out = ffi.new("uint8_t[]", len(plaintext) + 16)
    key = bytes(key)
    if _require().dp_test_aead_seal(key, nonce, aad, len(aad), plaintext, len(plaintext), out):
        raise ValueError("aead_seal failed (key must be 32 bytes, nonce 12)")
    return bytes(out)


def aead_open(key: bytes | bytearray, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes | None:
    out = ffi.new("uint8_t[]", max(len(ciphertext), 1))
    key = bytes(key)
    if _require().dp_test_aead_open(key, nonce, aad, len(aad), ciphertext, len(ciphertext), out):
        return None
    return bytes(out)[: len(ciphertext) - 16]


class ReplayWindow:
    """The C replay window alone (dp_test_replay_*), for tests."""

    def __init__(self) -> None:
        self._r = ffi.gc(_require().dp_test_replay_new(), lib.dp_test_replay_free)

    def check(self, counter: int) -> bool:
        return bool(lib.dp_test_replay_check(self._r, counter))

    @staticmethod
    def window_size() -> int:
        return int(_require().dp_test_replay_window_size())


def bench_pipeline(workers: int, packets: int, size: int = 1420) -> tuple[float, float]:
    """Seconds the pipeline alone takes to seal and open `packets` packets of
    `size` bytes with `workers` crypto workers (native/pipeline_bench.c), the
    GIL released meanwhile, and the CPU seconds the process spent meanwhile.
    OSError: refused, or an open failed."""
    ns, cpu_ns = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    ret = _require().dp_bench_pipeline(workers, packets, size, ns, cpu_ns)
    _check(ret, "dp_bench_pipeline")
    return ns[0] / 1e9, cpu_ns[0] / 1e9
