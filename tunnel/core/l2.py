"""L2, what tap mode adds to the core: the learning switch, which tells the peer
a MAC address sits behind, and the path MTU answers for frames too big for the
tunnel.

The switch learns only from frames that authenticated from a peer, and its
entries age out like a Linux bridge's forwarding database (default ageing 300 s).
A MAC address that one peer holds is not taken by another while its entry is
fresh: else any peer could claim the address of a host behind another and have
its unicast. Such a frame is the L2 form of a packet from outside a peer's
allowed IPs, and is dropped as one.

Path MTU: a frame too big for the tunnel gets the answer a router on the path
would give, instead of vanishing. A tap device on a bridge must accept the
segment's full-size frames (1500-byte IP packets on a standard LAN), or the
bridge drops the bigger ones silently before pyvpn ever sees them. The tunnel
itself carries at most `mtu` bytes of frame payload. For a frame in between,
too_big_reply builds the ICMP error a router with a next hop of `mtu` would
send, and pyvpn writes it back into the device toward the sender, which then
lowers its path MTU (RFC 1191, RFC 8201) and TCP its segment size. Like tinc and
other L2 tunnels, the error comes from the address the packet was sent to: a
bridge has no address of its own on the segment, and hosts accept a "too big"
error from any source whose quote matches one of their packets.

Only IPv4 with Don't Fragment and IPv6 get an answer. Everything else (IPv4 that
may be fragmented, ARP, any other ethertype) gets None: the caller sends the
frame anyway and the underlay IP layer fragments the outer UDP datagram, which
costs throughput but loses nothing. No rate limit either: Linux exempts
"fragmentation needed" and "packet too big" from its ICMP rate limits because
throttling them would break path MTU discovery.
"""

from collections.abc import Iterable
from enum import Enum
from typing import Generic, Protocol, TypeVar

from tunnel.protocol.constants import (
    DEFAULT_MAC_AGEING,
    ETHERNET_HEADER_SIZE,
    MAC_TABLE_MAX,
    MAX_VLAN_TAGS,
)

from .l3 import ICMP_DEST_UNREACH, IPV4_HEADER, IPV6_HEADER, IPV6_MIN_MTU, error_v4, error_v6

T = TypeVar("T")


class Learned(Enum):
    """What learning a frame's source address came to."""

    YES = "yes"  # learned or refreshed (or a group address, which is never learned)
    HELD_BY_OTHER = "held by other"  # fresh behind another peer: the frame is a forgery
    TABLE_FULL = "table full"  # not learned: frames to it are flooded


class Switch(Protocol[T]):
    """What the core asks of a MAC table: MacTable here, or the native plane's."""

    ageing: float

    def learn(self, mac: bytes, owner: T, now: float) -> Learned: ...

    def lookup(self, mac: bytes, now: float) -> T | None: ...

    def forget_owner(self, owner: T) -> None: ...

    def bind(self, owner: T, macs: Iterable[bytes]) -> None: ...

    def entries(self, now: float) -> list[tuple[bytes, T, float]]: ...


class MacTable(Generic[T]):
    """The learned entries, at most MAC_TABLE_MAX live ones, and the bound ones (peers'
    allowed_macs): configuration, never aged, never taken, and not under the cap,
    which bounds what peers' frames can make the table grow by (the configuration
    is bounded already). native/mactable.c keeps the same rules, and
    tests/planes/test_native_agreement.py holds the two to the same answers."""

    def __init__(self, ageing: float = DEFAULT_MAC_AGEING) -> None:
        self.ageing = ageing
        self._entries: dict[bytes, tuple[T, float]] = {}
        self._bound: dict[bytes, T] = {}

    def learn(self, mac: bytes, owner: T, now: float) -> Learned:
        if mac[0] & 1:  # a group address is never a source to learn
            return Learned.YES
        if mac in self._bound:
            return Learned.YES if self._bound[mac] is owner else Learned.HELD_BY_OTHER
        entry = self._entries.get(mac)
        if entry is not None and entry[0] is not owner and now - entry[1] < self.ageing:
            return Learned.HELD_BY_OTHER
        if entry is None and len(self._entries) >= MAC_TABLE_MAX:
            self.entries(now)  # make room by ageing out, as native/mactable.c prunes
            if len(self._entries) >= MAC_TABLE_MAX:
                return Learned.TABLE_FULL
        self._entries[mac] = (owner, now)
        return Learned.YES

    def lookup(self, mac: bytes, now: float) -> T | None:
        if mac in self._bound:
            return self._bound[mac]
        entry = self._entries.get(mac)
        if entry is None:
            return None
        if now - entry[1] >= self.ageing:
            del self._entries[mac]
            return None
        return entry[0]

    def forget_owner(self, owner: T) -> None:
        self._entries = {m: e for m, e in self._entries.items() if e[0] is not owner}
        self._bound = {m: o for m, o in self._bound.items() if o is not owner}

    def bind(self, owner: T, macs: Iterable[bytes]) -> None:
        """The owner's allowed MACs become exactly these, taken from whoever held them.

        What the owner may no longer send from is no longer its: an address dropped
        from its list goes at once, free for whoever sends from it next, and so,
        with a list, does any address it had learned off it."""
        macs = set(macs)
        self._bound = {m: o for m, o in self._bound.items() if o is not owner}
        self._bound.update(dict.fromkeys(macs, owner))
        self._entries = {
            m: e for m, e in self._entries.items() if m not in macs and not (macs and e[0] is owner)
        }

    def entries(self, now: float) -> list[tuple[bytes, T, float]]:
        """Live entries as (mac, owner, age in seconds); expired ones are dropped."""
        self._entries = {m: e for m, e in self._entries.items() if now - e[1] < self.ageing}
        return [(mac, owner, now - seen) for mac, (owner, seen) in self._entries.items()]


def is_group_mac(mac: bytes) -> bool:
    """Broadcast and multicast MACs have the I/G bit set in their first octet."""
    return bool(mac[0] & 1)


ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
# 802.1Q and 802.1ad (QinQ) tags: the reply keeps them, so it returns on the same VLAN.
VLAN_ETHERTYPES = (0x8100, 0x88A8)
VLAN_TAG = 4

IPV4_DONT_FRAGMENT = 0x4000
IPV4_MIN_MTU = 68  # RFC 791: every IPv4 link carries 68 bytes
ICMP_FRAG_NEEDED = 4
ICMPV6_PACKET_TOO_BIG = 2


def too_big_reply(frame: bytes, mtu: int) -> bytes | None:
    """The Ethernet frame to write back into the device for a `frame` whose payload
    does not fit the tunnel's `mtu`, or None to send the frame as it is.

    The reply goes from the original destination's MAC and IP address to the
    sender's, on the same VLAN tags, and reports the MTU left for the IP packet:
    `mtu` minus any VLAN tags, which the tunnel carries as payload too.
    """
    if len(frame) - ETHERNET_HEADER_SIZE <= mtu:
        return None
    split = _network_header(frame)
    if split is None:
        return None
    ethertype, offset = split
    # RFC 1122 3.2.2 / RFC 4443 2.4: never answer a link-layer broadcast or multicast;
    # a group source address is forged and has nobody to answer.
    if is_group_mac(frame[0:6]) or is_group_mac(frame[6:12]):
        return None
    ip_mtu = mtu - (offset - ETHERNET_HEADER_SIZE)
    packet = frame[offset:]
    if ethertype == ETHERTYPE_IPV4:
        reply = _fragmentation_needed(packet, ip_mtu)
    elif ethertype == ETHERTYPE_IPV6:
        reply = _packet_too_big(packet, ip_mtu)
    else:
        return None
    if reply is None:
        return None
    # Swapped MACs; the VLAN tags and the ethertype (frame[12:offset]) stay as they were.
    return frame[6:12] + frame[0:6] + frame[12:offset] + reply


def _network_header(frame: bytes) -> tuple[int, int] | None:
    """(ethertype, offset of the IP header) after up to two VLAN tags, or None."""
    offset = 12
    for _ in range(MAX_VLAN_TAGS + 1):
        if len(frame) < offset + 2:
            return None
        ethertype = int.from_bytes(frame[offset : offset + 2], "big")
        if ethertype not in VLAN_ETHERTYPES:
            return ethertype, offset + 2
        offset += VLAN_TAG
    return None


def _fragmentation_needed(packet: bytes, mtu: int) -> bytes | None:
    """ICMP destination unreachable, fragmentation needed (RFC 792, RFC 1191)."""
    if len(packet) < IPV4_HEADER or mtu < IPV4_MIN_MTU:
        return None
    if int.from_bytes(packet[2:4], "big") <= mtu:
        return None  # the IP packet fits; the frame only carries trailing bytes
    if not int.from_bytes(packet[6:8], "big") & IPV4_DONT_FRAGMENT:
        return None  # may be fragmented
    return error_v4(packet, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu)


def _packet_too_big(packet: bytes, mtu: int) -> bytes | None:
    """ICMPv6 Packet Too Big (RFC 4443 3.2)."""
    if len(packet) < IPV6_HEADER or mtu < IPV6_MIN_MTU:
        # IPv6 hosts never go below 1280 (RFC 8200 5): a smaller tunnel can only
        # let the underlay fragment.
        return None
    if IPV6_HEADER + int.from_bytes(packet[4:6], "big") <= mtu:
        return None  # fits (or a jumbogram's zero length)
    return error_v6(packet, ICMPV6_PACKET_TOO_BIG, 0, mtu)


def frame_targets(switch: Switch[T], peers: Iterable[T], frame: bytes, now: float) -> list[T]:
    """The peers a frame read from the device goes to: the one its destination was
    learned behind, else every peer (a group address, or one not learned yet)."""
    destination = frame[:6]
    owner = None if is_group_mac(destination) else switch.lookup(destination, now)
    # Split horizon: a frame from a MAC learned behind a peer came from it (a
    # bridge port in hairpin mode relays it back); it must not return there.
    source = switch.lookup(frame[6:12], now)
    return [p for p in ([owner] if owner else peers) if p is not source]
