"""The native data plane behind `pyvpn up`: C threads move transport messages
(native/), this shell keeps the protocol in the sans-IO core. It hands new
keypairs to C, which owns their slots, and has the core adopt them; it feeds the
core the datagrams and packets C hands up, and the transport events C reports,
which the core's timers run on; C's counters are the figures `show` prints."""

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, fields
from typing import Any

from tunnel.core.actions import (
    Action,
    ConsumeInitiation,
    KeypairInstalled,
    KeypairsCleared,
    StagedPurged,
    Transmit,
)
from tunnel.core.drops import Drop
from tunnel.core.interface import Interface
from tunnel.core.l2 import Learned
from tunnel.core.reconfig import Applied
from tunnel.host import clock
from tunnel.protocol.noise import INITIAL_CHAINING_KEY
from tunnel.protocol.peer import Peer

from . import dp
from .base import Plane
from .dp import NativePlane, PeerStats, UpcallKind, parse_upcall

log = logging.getLogger("pyvpn")

# The core's reason for each of the C plane's interface-wide drop counters
# (dp_if_stats, whose names `show --json` prints as C's own under "native").
INTERFACE_DROPS = {
    Drop.UNKNOWN_INDEX: "rx_unknown_index",
    Drop.MALFORMED: "rx_malformed",
    Drop.NO_ROUTE: "tx_no_route",
    Drop.RUNT_FRAME: "tx_malformed",
    Drop.UPCALL_OVERFLOW: "upcalls_dropped",
    Drop.RATELIMITED: "rx_ratelimited",
    Drop.BAD_MAC1: "rx_bad_mac1",
    Drop.MAC_TABLE_FULL: "rx_mac_table_full",
}
UPCALL_BATCH = 256
UPCALL_BUFFER = 4 << 20  # bytes: some 3000 handshake upcalls
SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>: SO_SNDBUF beyond wmem_max, for root
NO_STATS = PeerStats(**{f.name: 0 for f in fields(PeerStats)} | {"endpoint": None})
# One I/O thread for both directions: right for 2 cores, and what keeps a flow's
# order (docs/internals.md); crypto workers beside it are the config's `workers`.
WORKERS = 1


class NativeMacTable:
    """tap: the learning switch C keeps, as the core asks it (a lookup for a frame
    Python sends, `show`). Read on demand, never copied: copying it every tick cost
    up to 20 ms of Python per tick with a full table."""

    def __init__(self, plane: NativePlane, peers: dict[int, Peer], ageing: float) -> None:
        self.plane, self.peers, self.ageing = plane, peers, ageing

    def learn(self, mac: bytes, owner: Peer, now: float) -> Learned:
        """C learns from every frame it decrypts, and refuses what another peer
        holds itself (counted in the peer's drop_bad_source)."""
        return Learned.YES

    def lookup(self, mac: bytes, now: float) -> Peer | None:
        peer_id = self.plane.mac_owner(mac)
        return None if peer_id is None else self.peers.get(peer_id)

    def forget_owner(self, owner: Peer) -> None:
        """dp_remove_peer() forgets the peer's MAC addresses in C."""

    def bind(self, owner: Peer, macs: Iterable[bytes]) -> None:
        """NativeShell._sync hands the peer's allowed MACs to C."""

    def entries(self, now: float) -> list[tuple[bytes, Peer, float]]:
        return [
            (e.mac, self.peers[e.peer_id], e.age)
            for e in self.plane.mac_table()
            if e.peer_id in self.peers
        ]


class NativeShell(Plane):
    name = "native"

    def __init__(
        self, iface: Interface, dev_fd: int, sock: socket.socket, crypto_workers: int = 0
    ) -> None:
        super().__init__(iface, dev_fd, sock)
        self.crypto_workers = crypto_workers
        # A virtio_net_hdr of zeros (no offload) before the packets Python itself
        # writes into the device.
        self.device_prefix = bytes(dp.VNET_HDR_LEN)
        self.ctrl, ctrl_native = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ctrl.setblocking(False)
        # Room for a hub's burst of handshakes while Python works through them
        # (wireguard-go queues 1024, the kernel 4096): a full socket makes C
        # count Python as behind and limit every source (native/upcall.c).
        with contextlib.suppress(PermissionError):  # without root: what wmem_max allows
            ctrl_native.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, UPCALL_BUFFER)
        self._ctrl_native = ctrl_native  # the C side writes to it; closed after the plane
        self.plane = NativePlane(
            dev_fd, sock.fileno(), ctrl_native.fileno(), tap=iface.l2, vnet_hdr=True, mtu=iface.mtu
        )
        self.plane.set_mac_ageing(int(iface.macs.ageing))
        self._set_keys()
        # C's handshake worker does the public-key work of initiations; the core
        # decides (native/handshake.c).
        iface.external_handshakes = True
        self._under_load_until = float("-inf")  # as C last heard it
        self.ids: dict[Peer, int] = {}
        self.peers: dict[int, Peer] = {}
        # C's stats of each peer as last seen here; a peer whose stats never moved
        # has none (C reports a new peer's changes from all zeros).
        self.last: dict[int, PeerStats] = {}
        self._next_id = 1
        for peer in iface.peers.values():
            self._add(peer)
        self.last_interface = self.plane.interface_stats()
        iface.macs = NativeMacTable(self.plane, self.peers, iface.macs.ageing)

    def _add(self, peer: Peer) -> None:
        peer_id, self._next_id = self._next_id, self._next_id + 1
        self.plane.add_peer(peer_id)  # refused: C and the maps hold nothing of it
        self.ids[peer], self.peers[peer_id] = peer_id, peer
        self._sync(peer)

    def _sync(self, peer: Peer) -> None:
        """C takes the core's endpoint and allowed IPs for the peer."""
        peer_id = self.ids[peer]
        if peer.endpoint:
            self.plane.set_endpoint(peer_id, peer.endpoint)
        self.plane.set_allowed_ips(peer_id, self.iface.routes.networks_of(peer))
        if self.iface.l2:
            self.plane.set_allowed_macs(peer_id, peer.allowed_macs)

    def _remove(self, peer: Peer) -> None:
        peer_id = self.ids.pop(peer)
        del self.peers[peer_id]
        self.last.pop(peer_id, None)
        self.plane.remove_peer(peer_id)  # its keypairs and MAC addresses too

    def reconfigured(self, applied: Applied) -> None:
        for peer in applied.removed:
            self._remove(peer)
        for peer in applied.added:
            self._add(peer)
        for peer in applied.updated:
            self._sync(peer)
        self._set_keys()  # a new private key's
        super().reconfigured(applied)

    def reverted(self) -> None:
        """C takes every peer from the core again: a peer the change removed comes
        back (without its sessions, which C freed), one it added goes, and the
        networks it moved between peers go back to their owners."""
        for peer in [p for p in self.ids if self.iface.peers.get(p.public_key) is not p]:
            self._remove(peer)
        for peer in self.iface.peers.values():
            if peer in self.ids:
                self._sync(peer)
            else:
                self._add(peer)
                self.iface.adopt(peer, None, None, None)
        self._set_keys()

    def _set_keys(self) -> None:
        """C checks mac1 with our public key's, and its handshake worker uses our
        private key."""
        identity = self.iface.identity
        self.plane.set_mac1_key(self.iface.cookie_checker.mac1_key)
        self.plane.set_static_key(
            identity.private_key, INITIAL_CHAINING_KEY, identity.responder_hash
        )

    def _tell_load(self) -> None:
        """C hands initiations to its worker only while the core is not under load."""
        until = self.iface.under_load_until
        if until != self._under_load_until:
            self._under_load_until = until
            self.plane.set_under_load(round(until * 1e9) if until > 0 else 0)  # -inf: never

    def set_mtu(self, mtu: int) -> None:
        self.plane.set_mtu(mtu)  # C pads the packets it sends
        super().set_mtu(mtu)

    def readers(self) -> dict[int, Callable[[], None]]:
        return {self.ctrl.fileno(): self._upcalls}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.plane.start(WORKERS, self.crypto_workers)
        super().start(loop)

    def replace_socket(self, new: socket.socket) -> None:
        # The workers hold the fd in their polls: it changes while they are stopped.
        self.plane.stop()
        super().replace_socket(new)
        self.plane.udp_replaced()
        self.plane.start(WORKERS, self.crypto_workers)

    def stop(self) -> None:
        super().stop()
        self.plane.stop()
        self.plane.close()
        self.ctrl.close()
        self._ctrl_native.close()

    def refresh(self) -> None:
        """Bring the figures up to date from C's counters, and hand the core the
        events of the peers whose counters moved: what an upcall lost, or what
        C held back for the next tick (native/events.c)."""
        now = clock.now()
        new_if, old_if = self.plane.interface_stats(), self.last_interface
        self.last_interface = new_if
        for reason, field in INTERFACE_DROPS.items():
            delta = getattr(new_if, field) - getattr(old_if, field)
            if delta:
                self.iface.drops[reason] += delta
        # Only the peers whose stats moved: a hub's thousands of idle peers cost nothing.
        for peer_id, new in self.plane.changed_stats():
            peer = self.peers.get(peer_id)
            if peer is None:
                continue
            old = self.last.get(peer_id, NO_STATS)
            self.last[peer_id] = new
            self._adopt(peer, dp.slots_of(new))
            peer.drops.replay_or_forged += (new.drop_bad_tag - old.drop_bad_tag) + (
                new.drop_replay - old.drop_replay
            )
            bad_source = new.drop_bad_source - old.drop_bad_source
            peer.drops.bad_source += bad_source
            if bad_source and self.iface.l2:
                self.iface.mac_conflict(peer, now)
            peer.drops.not_ip += new.drop_malformed - old.drop_malformed
            peer.drops.staged_overflow += new.staged_overflow - old.staged_overflow
            self._events(peer, self.plane.take_events(peer_id), now)
            promoted = (new.has_current, new.current_local_index) != (
                old.has_current,
                old.current_local_index,
            )
            if new.has_current and promoted:
                current = peer.current
                if current is not None and not current.keys.is_initiator:
                    # C promoted a responder's `next` on its first message. It says
                    # so in an upcall too, which a flood can crowd out of the
                    # control socket: the stats always tell.
                    self.apply(self.iface.session_confirmed(peer, now))

    def _events(self, peer: Peer, events: dp.PeerEvents, now: float) -> None:
        """What C sent to and received from the peer, to the core's timers, each
        direction at the time of its last message."""
        if events.tx_bytes:
            when = events.last_tx_ns / 1e9 if events.last_tx_ns else now
            self.apply(
                self.iface.transport_sent(peer, events.tx_bytes, events.tx_data_messages > 0, when)
            )
        if events.rx_bytes and events.endpoint is not None:
            when = events.last_rx_ns / 1e9 if events.last_rx_ns else now
            self.apply(
                self.iface.transport_received(
                    peer, events.endpoint, events.rx_bytes, events.rx_data_messages, when
                )
            )

    def own_stats(self) -> dict[str, Any]:
        """C's interface counters as C holds them now (upcalls, offloads, errors)."""
        return asdict(self.plane.interface_stats())

    def _adopt(self, peer: Peer, slots: dp.Slots) -> None:
        """C owns the keypair slots (it shuffles and confirms them): the core's
        view of them is what C reports, and so is the current send counter."""
        self.iface.adopt(peer, slots.current, slots.previous, slots.next)
        if peer.current is not None:
            peer.current.send_counter = slots.current_send_counter

    def _upcalls(self) -> None:
        try:
            self._read_upcalls()
        finally:
            self._tell_load()

    def _read_upcalls(self) -> None:
        for _ in range(UPCALL_BATCH):
            try:
                data = self.ctrl.recv(65536 + 64)
            except BlockingIOError:
                return
            # Each its own time: a batch of handshakes takes a good part of a
            # second, and one `now` for all would make an initiator's next
            # initiation look like a flood (INITIATIONS_PER_SECOND).
            now = clock.now()
            upcall = parse_upcall(data)
            peer = self.peers.get(upcall.peer_id)
            if upcall.kind is UpcallKind.INITIATION and upcall.address is not None:
                c = dp.parse_consumed(upcall.payload)
                self.apply(
                    self.iface.receive_consumed_initiation(
                        c.initiation, upcall.address, c.consumed, c.start, c.admitted, now
                    )
                )
            elif upcall.kind is UpcallKind.DATAGRAM and upcall.address is not None:
                if self.took_stun(upcall.payload, upcall.address):
                    continue
                self.apply(self.iface.receive_datagram(upcall.payload, upcall.address, now))
            elif upcall.kind is UpcallKind.TOO_BIG:
                answer = self.iface.answer_too_big(upcall.payload[dp.VNET_HDR_LEN :])
                if answer is not None:
                    self.apply(answer)
                else:  # C sends it on, segmented as the device handed it over
                    try:
                        self.plane.transmit_frame(upcall.payload)
                    except OSError as e:
                        log.debug("native transmit failed: %s", e.strerror)
            elif upcall.kind is UpcallKind.UNROUTED:  # C counted it
                self.apply(self.iface.unreachable(upcall.payload, now))
            elif peer is None:
                continue
            elif upcall.kind is UpcallKind.EVENTS:
                events = self.plane.take_events(upcall.peer_id)
                self._adopt(peer, self.plane.slots(upcall.peer_id))  # the counter rekeying reads
                self._events(peer, events, now)
            elif upcall.kind is UpcallKind.NEED_KEY:  # C holds the packets meanwhile
                self.apply(self.iface.need_key(peer, now))
            elif upcall.kind is UpcallKind.KEYPAIR_CONFIRMED:
                self.refresh()  # now rather than at the next tick: staged packets wait
            elif upcall.kind is UpcallKind.ENDPOINT_CHANGED and upcall.address is not None:
                peer.endpoint = upcall.address

    def carry_out(self, action: Action) -> None:
        if isinstance(action, KeypairInstalled):
            keys = action.keypair.keys
            peer_id = self.ids[action.peer]
            if action.peer.endpoint:
                self.plane.set_endpoint(peer_id, action.peer.endpoint)
            try:
                self.plane.install_keypair(
                    peer_id,
                    keys.is_initiator,
                    keys.local_index,
                    keys.remote_index,
                    keys.send_key,
                    keys.receive_key,
                )
            except OSError as e:  # the session is lost; the timers handshake again
                log.error("native plane refused a keypair: %s", e.strerror)
            finally:
                keys.erase()  # C holds them now, and is the only one to
            self._adopt(action.peer, self.plane.slots(peer_id))
        elif isinstance(action, Transmit):
            try:
                self.plane.send_packet(self.ids[action.peer], action.packet)
            except OSError as e:
                if e.errno == errno.ENOKEY:  # C staged it
                    self.apply(self.iface.need_key(action.peer, clock.now()))
                else:
                    log.debug("native send failed: %s", e.strerror)
        elif isinstance(action, KeypairsCleared):
            peer_id = self.ids[action.peer]
            for slot in (dp.SLOT_CURRENT, dp.SLOT_PREVIOUS, dp.SLOT_NEXT):
                self.plane.clear_keypair(peer_id, slot)
            self._adopt(action.peer, self.plane.slots(peer_id))
        elif isinstance(action, ConsumeInitiation):
            try:
                self.plane.submit_handshake(action.data, action.source)
            except OSError as e:  # a full queue is counted as an upcall lost
                log.debug("native handshake worker refused an initiation: %s", e.strerror)
        elif isinstance(action, StagedPurged):
            self.plane.purge_staged(self.ids[action.peer])
