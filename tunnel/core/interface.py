"""The sans-IO WireGuard interface: datagrams, device packets and clock ticks go
in, actions come out. It never touches a socket or a clock, so every path is a
unit test. It holds a State (state.py, what is kept) and hands each input to the
module of its concern, functions over that state as the kernel's send.c,
receive.c and timers.c act on struct wg_device: send.py, receive.py, ticks.py;
l2.py and l3.py hold what tap and tun mode each add. This class joins them and
takes configuration (adding and removing peers, the private key)."""

from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

from tunnel.protocol.address import Address
from tunnel.protocol.allowed_ips import AllowedIPs
from tunnel.protocol.cookie import CookieChecker
from tunnel.protocol.keypair import Keypair
from tunnel.protocol.noise import ConsumedInitiation, ResponseStart, StaticIdentity
from tunnel.protocol.peer import Peer
from tunnel.protocol.peer_config import PeerConfig

from . import receive, send, state, ticks
from .actions import Action, KeypairsCleared
from .drops import Drop
from .l2 import Switch
from .state import State

T = TypeVar("T")


class OfState(Generic[T]):
    """An attribute of the interface that is its state's: the planes, the control
    plane and the tests read and set these on the interface."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, iface: None, owner: type) -> "OfState[T]": ...

    @overload
    def __get__(self, iface: "Interface", owner: type) -> T: ...

    def __get__(self, iface: "Interface | None", owner: type) -> "T | OfState[T]":
        if iface is None:
            return self
        value: T = getattr(iface.state, self.name)
        return value

    def __set__(self, iface: "Interface", value: T) -> None:
        setattr(iface.state, self.name, value)


class Interface:
    identity: OfState[StaticIdentity] = OfState()
    cookie_checker: OfState[CookieChecker] = OfState()
    peers: OfState[dict[bytes, Peer]] = OfState()
    indices: OfState[dict[int, tuple[Peer, Keypair | None]]] = OfState()
    routes: OfState[AllowedIPs[Peer]] = OfState()
    macs: OfState[Switch[Peer]] = OfState()
    l2: OfState[bool] = OfState()
    mtu: OfState[int] = OfState()
    wall_offset: OfState[float] = OfState()
    randbytes: OfState[Callable[[int], bytes]] = OfState()
    external_transport: OfState[bool] = OfState()
    external_handshakes: OfState[bool] = OfState()
    drops: OfState[Counter[Drop]] = OfState()
    cookie_replies_sent: OfState[int] = OfState()
    under_load_until: OfState[float] = OfState()

    def __init__(self, private_key: bytes, **options: Any) -> None:
        """The options are State's (l2, mtu, randbytes, wall_offset, ...)."""
        self.state = State(private_key, **options)

    # Inputs: a batch of datagrams or device packets, or the clock.

    def receive_datagram(self, data: bytes, source: Address, now: float) -> list[Action]:
        return receive.receive_datagrams(self.state, [(data, source)], now)

    def receive_datagrams(self, datagrams: list[tuple[bytes, Address]], now: float) -> list[Action]:
        return receive.receive_datagrams(self.state, datagrams, now)

    def receive_consumed_initiation(
        self,
        data: bytes,
        source: Address,
        consumed: ConsumedInitiation | None,
        start: ResponseStart | None,
        admitted: bool,
        now: float,
    ) -> list[Action]:
        """An initiation an external handshake worker consumed (None: it did not
        authenticate), with its response started."""
        return receive.receive_consumed_initiation(
            self.state, data, source, consumed, start, admitted, now
        )

    def send_packet(self, packet: bytes, now: float) -> list[Action]:
        """A packet (tun) or frame (tap) read from the device."""
        return send.send_packets(self.state, [packet], now)

    def send_packets(self, packets: list[bytes], now: float) -> list[Action]:
        return send.send_packets(self.state, packets, now)

    def tick(self, now: float) -> list[Action]:
        return ticks.tick(self.state, now)

    # What a plane reports, or asks, as it carries out actions.

    def answer_too_big(self, frame: bytes) -> list[Action] | None:
        return send.answer_too_big(self.state, frame)

    def unreachable(self, packet: bytes, now: float) -> list[Action]:
        return send.unreachable(self.state, packet, now)

    def need_key(self, peer: Peer, now: float) -> list[Action]:
        return send.need_key(self.state, peer, now)

    def transport_sent(self, peer: Peer, size: int, is_data: bool, now: float) -> list[Action]:
        return send.transport_sent(self.state, peer, size, is_data, now)

    def transport_received(
        self, peer: Peer, source: Address, size: int, data_messages: int, now: float
    ) -> list[Action]:
        return receive.transport_received(self.state, peer, source, size, data_messages, now)

    def session_confirmed(self, peer: Peer, now: float) -> list[Action]:
        return receive.session_confirmed(self.state, peer, now)

    def adopt(
        self, peer: Peer, current: int | None, previous: int | None, next_: int | None
    ) -> None:
        state.adopt(self.state, peer, current, previous, next_)

    def mac_conflict(self, peer: Peer, now: float) -> None:
        state.mac_conflict(peer, now)

    # Configuration.

    def add_peer(self, config: PeerConfig) -> Peer:
        st = self.state
        if config.public_key in st.peers:
            raise ValueError("peer already exists")
        peer = Peer(st.identity, config)
        st.peers[config.public_key] = peer
        for network in config.allowed_ips:
            st.routes.insert(network, peer)
        if peer.allowed_macs:
            st.macs.bind(peer, peer.allowed_macs)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        st = self.state
        peer = st.peers.pop(public_key)
        st.routes.remove_owner(peer)
        st.macs.forget_owner(peer)
        state.forget_indices(st, peer)

    def set_private_key(self, private_key: bytes) -> list[Action]:
        """A new identity (device.go SetPrivateKey): sessions made under the old one
        are dropped, so the next packet handshakes with the new key."""
        st = self.state
        st.identity = StaticIdentity(private_key)
        st.cookie_checker = CookieChecker(st.identity.public_key, st.randbytes)
        actions: list[Action] = []
        for peer in st.peers.values():
            state.drop_handshake_index(st, peer)
            peer.rekey_identity(st.identity)
            state.clear_keypairs(st, peer)
            actions.append(KeypairsCleared(peer))
        return actions

    def start(self, now: float) -> list[Action]:
        """Peers with a persistent keepalive announce themselves at once, as wg does,
        and every peer with an endpoint is greeted with an initiation (paced by
        tick), so that a restarted end is back in session within a round trip."""
        st = self.state
        actions: list[Action] = []
        for peer in st.peers.values():
            actions += self.announce(peer, now)
        st.greeting = deque(p for p in st.peers.values() if p.endpoint)
        st.greeting_since, st.greeted = now, 0
        return actions + ticks.greet(st, now)

    def announce(self, peer: Peer, now: float) -> list[Action]:
        """A keepalive now if the peer has a persistent keepalive and an endpoint."""
        if peer.persistent_keepalive and peer.endpoint:
            return send.keepalive(self.state, peer, now)
        return []
