"""Changing a running interface: what `wg set`, `wg setconf` and `wg syncconf` ask
through the UAPI (uapi.parse_set), applied to the sans-IO core in one step. The
request is checked whole before this runs, so a bad one changes nothing."""

from dataclasses import dataclass, field
from typing import NamedTuple

from tunnel.protocol.address import Address
from tunnel.protocol.allowed_ips import Network
from tunnel.protocol.keys import public_key
from tunnel.protocol.peer import Peer
from tunnel.protocol.peer_config import PeerConfig

from .actions import Action, Deliver, Send
from .interface import Interface


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

    def remove(key: bytes) -> None:
        peer = iface.peers[key]
        iface.remove_peer(key)
        if peer in applied.added:
            applied.added.remove(peer)
        else:
            applied.removed.append(peer)

    if change.private_key is not None and change.private_key != iface.identity.private_key:
        # No peer may carry our own public key (device.go SetPrivateKey).
        if any(change.private_key) and public_key(change.private_key) in iface.peers:
            remove(public_key(change.private_key))
        applied.actions += iface.set_private_key(change.private_key)
    if change.replace_peers:
        for key in list(iface.peers):
            remove(key)
    for pc in change.peers:
        if pc.public_key == iface.identity.public_key:
            continue  # ourselves: ignored, as wireguard-go does
        peer = iface.peers.get(pc.public_key)
        if pc.remove:
            if peer is not None:
                remove(pc.public_key)
            continue
        if peer is None:
            if pc.update_only:
                continue
            peer = iface.add_peer(PeerConfig(pc.public_key))
            applied.added.append(peer)
        _update(iface, peer, pc, now, applied)

    def live(peer: Peer) -> bool:
        return iface.peers.get(peer.public_key) is peer

    applied.updated = [
        p for p in dict.fromkeys(applied.updated) if live(p) and p not in applied.added
    ]
    # A peer removed later in the request takes its pending actions with it.
    applied.actions = [a for a in applied.actions if isinstance(a, Send | Deliver) or live(a.peer)]
    return applied


def _update(iface: Interface, peer: Peer, pc: PeerChange, now: float, applied: Applied) -> None:
    if pc.preshared_key is not None:
        peer.set_preshared_key(pc.preshared_key if any(pc.preshared_key) else None)
    if pc.endpoint is not None or pc.endpoint_name is not None:
        # An address given without a name replaces the name too: it is not resolved again.
        peer.endpoint_name = pc.endpoint_name
        if pc.endpoint is not None and pc.endpoint != peer.endpoint:
            peer.endpoint = pc.endpoint
            applied.updated.append(peer)
    if pc.replace_allowed_ips or pc.allowed_ips:
        if pc.replace_allowed_ips:
            iface.routes.remove_owner(peer)
        for network, remove in pc.allowed_ips:
            if remove:
                iface.routes.remove(network, peer)
            else:
                iface.routes.insert(network, peer)
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
