"""Changing a running interface: what `wg set`, `wg setconf` and `wg syncconf` ask
through the UAPI (uapi.parse_set), applied to the sans-IO core in one step. The
request is checked whole before this runs, so a bad one changes nothing."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from tunnel.protocol.address import Address
from tunnel.protocol.allowed_ips import AllowedIPs, Network
from tunnel.protocol.noise import Handshake, StaticIdentity
from tunnel.protocol.peer import Peer
from tunnel.protocol.peer_config import PeerConfig

from .actions import Action, Deliver, Send, SendBatch
from .interface import Interface

T = TypeVar("T")


class Refused(Exception):
    """A change not made: errno for the UAPI reply, a one-line reason for the log."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.errno = code


class IPEdit(NamedTuple):
    """One allowed_ip line: add the network, or remove it (wg's '-' prefix)."""

    network: Network
    remove: bool = False


@dataclass
class PeerChange:
    """One peer's section of a set request (the xplatform protocol's peer keys)."""

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None  # None: unchanged; all zeros: none
    endpoint: Address | None = None
    endpoint_name: Address | None = None  # pyvpn's: the (name, port) `endpoint` came from
    allowed_macs: list[bytes] | None = None  # pyvpn's, tap: None unchanged, else replaced
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[IPEdit] = field(default_factory=list)  # in the order given


@dataclass
class Change:
    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


@dataclass
class Applied:
    """What a plane must mirror outside the core, and the actions to carry out."""

    added: list[Peer] = field(default_factory=list)
    removed: list[Peer] = field(default_factory=list)
    updated: list[Peer] = field(default_factory=list)  # endpoint or allowed IPs changed
    actions: list[Action] = field(default_factory=list)


def apply(iface: Interface, change: Change, now: float) -> Applied:
    """Apply the interface's part of `change` (the socket's part is the shell's)."""
    applied = Applied()
    steps = list(_steps(iface, change))
    if _new_private_key(iface, change):
        assert change.private_key is not None
        applied.actions += iface.set_private_key(change.private_key)
    for key, section in steps:
        peer = iface.peers.get(key)
        if section is None:
            assert peer is not None
            iface.remove_peer(key)
            if peer in applied.added:
                applied.added.remove(peer)
            else:
                applied.removed.append(peer)
            continue
        if peer is None:
            peer = iface.add_peer(PeerConfig(key))
            applied.added.append(peer)
        _update(iface, peer, section, now, applied)

    def live(peer: Peer) -> bool:
        return iface.peers.get(peer.public_key) is peer

    applied.updated = [
        p for p in dict.fromkeys(applied.updated) if live(p) and p not in applied.added
    ]
    # A peer removed later in the request takes its pending actions with it.
    # Send, SendBatch and Deliver name no peer: they go as they are.
    applied.actions = [
        a for a in applied.actions if isinstance(a, Send | SendBatch | Deliver) or live(a.peer)
    ]
    return applied


def networks_after(iface: Interface, change: Change) -> set[Network]:
    """The allowed networks once `change` is applied, foreseen without applying it:
    the kernel's routes for them are added before the core takes the change, so a
    route the kernel refuses leaves the core as it was."""
    routes: AllowedIPs[bytes] = AllowedIPs()
    for key, peer in iface.peers.items():
        for network in iface.routes.networks_of(peer):
            routes.insert(network, key)
    for key, section in _steps(iface, change):
        if section is None:
            routes.remove_owner(key)
        else:
            _edit_allowed_ips(routes, key, section)
    return routes.networks()


class PeerBefore(NamedTuple):
    """What apply may change in a peer that stays."""

    preshared_key: bytes | None
    handshake: Handshake
    endpoint: Address | None
    endpoint_name: Address | None
    allowed_macs: frozenset[bytes]
    persistent_keepalive: int


class Before:
    """The core as it was before a change, to put back if the plane refuses to
    follow it (the native plane: C could not take a peer). Sessions come back only
    with an external transport, whose slots the core leaves to it (the change's
    KeypairsCleared is never carried out): without one a new private key has
    erased the old sessions' keys, and those peers handshake again."""

    def __init__(self, iface: Interface, change: Change) -> None:
        self.identity, self.cookie_checker = iface.identity, iface.cookie_checker
        self.peers = dict(iface.peers)
        self.indices = dict(iface.indices)
        self.networks = {peer: iface.routes.networks_of(peer) for peer in iface.peers.values()}
        # A new private key touches every peer; otherwise only those the request names.
        named = {pc.public_key for pc in change.peers}
        touched = [
            p for k, p in iface.peers.items() if change.private_key is not None or k in named
        ]
        self.fields = {
            p: PeerBefore(
                p.preshared_key,
                p.handshake,
                p.endpoint,
                p.endpoint_name,
                p.allowed_macs,
                p.persistent_keepalive,
            )
            for p in touched
        }

    def restore(self, iface: Interface) -> None:
        for peer in iface.peers.values():
            if self.peers.get(peer.public_key) is not peer:
                iface.macs.forget_owner(peer)  # added by the change
        # Their MAC addresses are bound again (learned ones are learned anew).
        rebound = [
            p for k, p in self.peers.items() if p in self.fields or iface.peers.get(k) is not p
        ]
        iface.identity, iface.cookie_checker = self.identity, self.cookie_checker
        iface.peers.clear()
        iface.peers.update(self.peers)
        iface.indices = dict(self.indices)
        iface.routes = AllowedIPs()
        for peer, networks in self.networks.items():
            for network in networks:
                iface.routes.insert(network, peer)
        for peer, before in self.fields.items():
            peer.handshake = before.handshake
            peer.set_preshared_key(before.preshared_key)
            peer.endpoint, peer.endpoint_name = before.endpoint, before.endpoint_name
            peer.allowed_macs = before.allowed_macs
            peer.timers.set_persistent_keepalive(float(before.persistent_keepalive))
        for peer in rebound:
            iface.macs.bind(peer, peer.allowed_macs)


def _new_private_key(iface: Interface, change: Change) -> bool:
    return change.private_key is not None and change.private_key != iface.identity.private_key


def _steps(iface: Interface, change: Change) -> Iterator[tuple[bytes, PeerChange | None]]:
    """The request peer by peer, in order, as (public key, its section to apply,
    adding the peer if it is new) or (public key, None: the peer goes). Both apply
    and networks_after follow these, so what one foresees the other does."""
    present = set(iface.peers)
    own = iface.identity.public_key
    if _new_private_key(iface, change):
        assert change.private_key is not None
        own = StaticIdentity(change.private_key).public_key
        # No peer may carry our own public key (device.go SetPrivateKey).
        if any(change.private_key) and own in present:
            present.discard(own)
            yield own, None
    if change.replace_peers:
        yield from ((key, None) for key in list(present))
        present.clear()
    for pc in change.peers:
        key = pc.public_key
        if key == own:
            continue  # ourselves: ignored, as wireguard-go does
        if pc.remove:
            if key in present:
                present.discard(key)
                yield key, None
        elif key in present or not pc.update_only:
            present.add(key)
            yield key, pc


def _update(iface: Interface, peer: Peer, pc: PeerChange, now: float, applied: Applied) -> None:
    if pc.preshared_key is not None:
        peer.set_preshared_key(pc.preshared_key if any(pc.preshared_key) else None)
    if pc.endpoint is not None or pc.endpoint_name is not None:
        # An address given without a name replaces the name too: it is not resolved again.
        peer.endpoint_name = pc.endpoint_name
        if pc.endpoint is not None and pc.endpoint != peer.endpoint:
            peer.endpoint = pc.endpoint
            applied.updated.append(peer)
    if _edit_allowed_ips(iface.routes, peer, pc):
        applied.updated.append(peer)
    if pc.allowed_macs is not None:
        peer.allowed_macs = frozenset(pc.allowed_macs)
        iface.macs.bind(peer, peer.allowed_macs)
        applied.updated.append(peer)
    if pc.persistent_keepalive is not None:
        was_on = peer.persistent_keepalive
        peer.timers.set_persistent_keepalive(float(pc.persistent_keepalive))
        if not was_on:
            # Turned on: announce at once (uapi.go pkaOn), as at start.
            applied.actions += iface.announce(peer, now)


def _edit_allowed_ips(routes: AllowedIPs[T], owner: T, pc: PeerChange) -> bool:
    """The section's allowed_ip lines, in order; whether it had any."""
    if pc.replace_allowed_ips:
        routes.remove_owner(owner)
    for network, remove in pc.allowed_ips:
        if remove:
            routes.remove(network, owner)
        else:
            routes.insert(network, owner)
    return pc.replace_allowed_ips or bool(pc.allowed_ips)
