"""An in-memory network of sans-IO interfaces with a fake clock, for unit tests."""

import heapq
import ipaddress
import random
from dataclasses import dataclass, field

from tunnel.core.actions import Deliver, DeliverBatch, Send, SendBatch
from tunnel.core.interface import Interface
from tunnel.protocol import keys
from tunnel.protocol.constants import TIMER_TICK
from tunnel.protocol.peer import Peer
from tunnel.protocol.peer_config import PeerConfig

# Two fixed keys, for tests that need any key at all.
K1, K2 = bytes(range(32)), bytes(range(1, 33))


def unbatched(action: SendBatch | DeliverBatch) -> list[Send | Deliver]:
    """A batch action as the one-packet actions it stands for, in order."""
    if isinstance(action, SendBatch):
        return [Send(action.destination, data) for data in action.datagrams]
    return [Deliver(packet) for packet in action.packets]


@dataclass
class Node:
    name: str
    address: tuple[str, int]
    iface: Interface
    delivered: list[bytes] = field(default_factory=list)


class SimNet:
    """Nodes exchange datagrams instantly; `wire` records every datagram sent."""

    def __init__(self, seed: int = 1) -> None:
        self.now = 1000.0
        self.nodes: dict[tuple[str, int], Node] = {}
        self.wire: list[tuple[tuple[str, int], tuple[str, int], bytes]] = []
        self.rng = random.Random(seed)
        # Datagrams for which this returns True are lost on the wire.
        self.lose = lambda data: False

    def node(self, name: str, host: str, *, l2: bool = False, **kw) -> Node:
        iface = Interface(
            keys.generate_private_key(),
            l2=l2,
            randbytes=self.rng.randbytes,
            wall_offset=1.7e9,
            **kw,
        )
        node = Node(name, (host, 51820), iface)
        self.nodes[node.address] = node
        return node

    def connect(
        self,
        a: Node,
        b: Node,
        a_ips: list[str],
        b_ips: list[str],
        a_endpoint: bool = True,
        b_endpoint: bool = True,
        **kw,
    ) -> None:
        """Make a and b peers; a routes b_ips to b and b routes a_ips to a."""
        a.iface.add_peer(
            PeerConfig(
                b.iface.identity.public_key,
                endpoint=b.address if a_endpoint else None,
                allowed_ips=[ipaddress.ip_network(n) for n in b_ips],
                **kw,
            )
        )
        b.iface.add_peer(
            PeerConfig(
                a.iface.identity.public_key,
                endpoint=a.address if b_endpoint else None,
                allowed_ips=[ipaddress.ip_network(n) for n in a_ips],
                **kw,
            )
        )

    def run(self, node: Node, actions: list) -> None:
        queue = [(node, a) for a in actions]
        while queue:
            sender, action = queue.pop(0)
            if isinstance(action, SendBatch | DeliverBatch):
                queue[:0] = [(sender, a) for a in unbatched(action)]
            elif isinstance(action, Deliver):
                sender.delivered.append(action.packet)
            elif isinstance(action, Send):
                self.wire.append((sender.address, action.destination, action.data))
                if self.lose(action.data):
                    continue
                target = self.nodes.get(action.destination)
                if target is not None:
                    queue += [
                        (target, x)
                        for x in target.iface.receive_datagram(
                            action.data, sender.address, self.now
                        )
                    ]

    def send(self, node: Node, packet: bytes) -> None:
        self.run(node, node.iface.send_packet(packet, self.now))

    def inject(self, source: tuple[str, int], target: Node, data: bytes) -> None:
        self.run(target, target.iface.receive_datagram(data, source, self.now))

    def advance(self, seconds: float, step: float = 0.1) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for node in list(self.nodes.values()):
                self.run(node, node.iface.tick(self.now))


class TimedNet:
    """Nodes with clocks of their own on a network with latency: datagrams take
    `latency` (plus up to a fifth more) to arrive, each node reads its clock as
    the network's time plus its offset, and ticks every TIMER_TICK from its own
    phase, as each daemon does. Events run in time order (a heap)."""

    def __init__(self, seed: int, latency: float = 0.0002) -> None:
        self.rng = random.Random(seed)
        self.latency = latency
        self.now = 1000.0
        self.nodes: dict[tuple[str, int], TimedNode] = {}
        self._events: list = []
        self._seq = 0
        self.wire: list[tuple[tuple[str, int], tuple[str, int], bytes]] = []

    def node(self, name: str, host: str, offset: float = 0.0, phase: float = 0.0, **kw):
        iface = Interface(
            keys.generate_private_key(), randbytes=self.rng.randbytes, wall_offset=1.7e9, **kw
        )
        node = TimedNode(name, (host, 51820), iface, offset=offset)
        self.nodes[node.address] = node
        self.at(self.now + phase, node, self._tick)
        return node

    def at(self, when: float, node: "TimedNode", handler, *args) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, node, handler, args))

    def run_until(self, end: float, done=lambda: False) -> bool:
        """Run events up to `end`; True as soon as `done()` holds."""
        while self._events and self._events[0][0] <= end:
            when, _, node, handler, args = heapq.heappop(self._events)
            self.now = when
            self.carry_out(node, handler(node, when + node.offset, *args))
            if done():
                return True
        self.now = end
        return done()

    def carry_out(self, node: "TimedNode", actions: list) -> None:
        for action in actions:
            if isinstance(action, SendBatch | DeliverBatch):
                self.carry_out(node, unbatched(action))
            elif isinstance(action, Deliver):
                node.delivered.append(action.packet)
            elif isinstance(action, Send) and action.destination in self.nodes:
                self.wire.append((node.address, action.destination, action.data))
                arrival = self.now + self.latency * (1 + self.rng.random() / 5)
                target = self.nodes[action.destination]
                self.at(arrival, target, self._receive, action.data, node.address)

    def start(self, node: "TimedNode") -> None:
        self.at(self.now, node, lambda n, now: n.iface.start(now))

    def feed(self, node: "TimedNode", packet: bytes, every: float) -> None:
        """The node's device reads `packet` at random, `every` seconds on average."""

        def read(n: TimedNode, now: float) -> list:
            self.at(self.now + self.rng.expovariate(1 / every), n, read)
            return n.iface.send_packet(packet, now)

        self.at(self.now + self.rng.random() * every, node, read)

    def _tick(self, node: "TimedNode", now: float) -> list:
        self.at(self.now + TIMER_TICK, node, self._tick)
        return node.iface.tick(now)

    @staticmethod
    def _receive(node: "TimedNode", now: float, data: bytes, source: tuple[str, int]) -> list:
        return node.iface.receive_datagram(data, source, now)


@dataclass
class TimedNode(Node):
    offset: float = 0.0


def pair(**kw) -> tuple[SimNet, Node, Node]:
    """Nodes a (10.0.0.1) and b (10.0.0.2), each the other's one peer; `kw` goes to both."""
    net = SimNet()
    a = net.node("a", "198.18.0.1", **kw)
    b = net.node("b", "198.18.0.2", **kw)
    net.connect(a, b, ["10.0.0.1/32"], ["10.0.0.2/32"])
    return net, a, b


def peer_of(node: Node) -> Peer:
    """A node's one peer."""
    (peer,) = node.iface.peers.values()
    return peer
