"""An in-memory network of sans-IO interfaces with a fake clock, for unit tests."""

import ipaddress
import random
from dataclasses import dataclass, field

from tunnel.core.actions import Deliver, DeliverBatch, Send, SendBatch
from tunnel.core.interface import Interface
from tunnel.protocol import keys
from tunnel.protocol.peer_config import PeerConfig


def ipv4_packet(src: str, dst: str, payload: bytes = b"x" * 20) -> bytes:
    total = 20 + len(payload)
    return (
        bytes([0x45, 0])
        + total.to_bytes(2, "big")
        + bytes(8)
        + ipaddress.ip_address(src).packed
        + ipaddress.ip_address(dst).packed
        + payload
    )


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
