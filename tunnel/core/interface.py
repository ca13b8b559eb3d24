"""The sans-IO WireGuard interface: datagrams, device packets and clock ticks go
in, actions come out. It never touches a socket or a clock, so every path is a
unit test. Each concern has its module, as the kernel's device.c, send.c,
receive.c and timers.c: state.py (what is kept), send.py, receive.py, ticks.py;
l2.py and l3.py hold what tap and tun mode each add. This class joins them and
takes configuration."""

from collections import deque

from tunnel.protocol.cookie import CookieChecker
from tunnel.protocol.noise import StaticIdentity
from tunnel.protocol.peer import Peer
from tunnel.protocol.peer_config import PeerConfig

from .actions import Action, KeypairsCleared
from .receive import Receiving
from .ticks import Ticking


class Interface(Receiving, Ticking):
    def add_peer(self, config: PeerConfig) -> Peer:
        if config.public_key in self.peers:
            raise ValueError("peer already exists")
        peer = Peer(self.identity, config)
        self.peers[config.public_key] = peer
        for network in config.allowed_ips:
            self.routes.insert(network, peer)
        if peer.allowed_macs:
            self.macs.bind(peer, peer.allowed_macs)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key)
        self.routes.remove_owner(peer)
        self.macs.forget_owner(peer)
        self._forget_indices(peer)

    def set_private_key(self, private_key: bytes) -> list[Action]:
        """A new identity (device.go SetPrivateKey): sessions made under the old one
        are dropped, so the next packet handshakes with the new key."""
        self.identity = StaticIdentity(private_key)
        self.cookie_checker = CookieChecker(self.identity.public_key, self.randbytes)
        actions: list[Action] = []
        for peer in self.peers.values():
            self._drop_handshake_index(peer)
            peer.rekey_identity(self.identity)
            self._retire(peer.clear_keypairs())
            actions.append(KeypairsCleared(peer))
        return actions

    def start(self, now: float) -> list[Action]:
        """Peers with a persistent keepalive announce themselves at once, as wg does,
        and every peer with an endpoint is greeted with an initiation (paced by
        tick), so that a restarted end is back in session within a round trip."""
        actions: list[Action] = []
        for peer in self.peers.values():
            actions += self.announce(peer, now)
        self.greeting = deque(p for p in self.peers.values() if p.endpoint)
        self.greeting_since, self.greeted = now, 0
        return actions + self._greet(now)

    def announce(self, peer: Peer, now: float) -> list[Action]:
        """A keepalive now if the peer has a persistent keepalive and an endpoint."""
        if peer.persistent_keepalive and peer.endpoint:
            return self._keepalive(peer, now)
        return []
