"""Path MTU in tap mode: a frame too big for the tunnel gets the answer a router on
the path would give, instead of vanishing.

A tap device on a bridge must accept the segment's full-size frames (1500-byte
IP packets on a standard LAN), or the bridge drops the bigger ones silently
before pyvpn ever sees them. The tunnel itself carries at most `mtu` bytes of
frame payload. For a frame in between, this module builds the ICMP error a router
with a next hop of `mtu` would send, and pyvpn writes it back into the device
toward the sender, which then lowers its path MTU (RFC 1191, RFC 8201) and TCP its
segment size. Like tinc and other L2 tunnels, the error comes from the address the
packet was sent to: a bridge has no address of its own on the segment, and hosts
accept a "too big" error from any source whose quote matches one of their packets.

Only IPv4 with Don't Fragment and IPv6 get an answer. Everything else (IPv4 that
may be fragmented, ARP, any other ethertype) returns None: the caller sends the
frame anyway and the underlay IP layer fragments the outer UDP datagram, which
costs throughput but loses nothing.

Pure functions over bytes, no state: no rate limit either, as Linux exempts
"fragmentation needed" and "packet too big" from its ICMP rate limits because
throttling them would break path MTU discovery.
"""

import struct

from .packet import ETHERNET_HEADER, is_group_mac

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
# 802.1Q and 802.1ad (QinQ) tags: the reply keeps them, so it returns on the same VLAN.
VLAN_ETHERTYPES = (0x8100, 0x88A8)
VLAN_TAG = 4
MAX_VLAN_TAGS = 2

IPV4_HEADER = 20
IPV4_DONT_FRAGMENT = 0x4000
IPV4_FRAGMENT_OFFSET = 0x1FFF
IPV4_MIN_MTU = 68  # RFC 791: every IPv4 link carries 68 bytes
PROTO_ICMP = 1
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
# RFC 1122 3.2.2: no ICMP error about an ICMP error (unreachable, source quench,
# redirect, time exceeded, parameter problem).
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
ICMP_HEADER = 8
ICMP_QUOTE_DATA = 8  # RFC 792: the IP header and the first 64 bits of the data
TOS_INTERNETWORK_CONTROL = 0xC0  # the precedence routers give their ICMP errors

IPV6_HEADER = 40
IPV6_MIN_MTU = 1280  # RFC 8200 section 5
PROTO_ICMPV6 = 58
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_INFORMATIONAL = 128  # types below are errors (RFC 4443 2.1)

HOP_LIMIT = 64


def too_big_reply(frame: bytes, mtu: int) -> bytes | None:
    """The Ethernet frame to write back into the device for a `frame` whose payload
    does not fit the tunnel's `mtu`, or None to send the frame as it is.

    The reply goes from the original destination's MAC and IP address to the
    sender's, on the same VLAN tags, and reports the MTU left for the IP packet:
    `mtu` minus any VLAN tags, which the tunnel carries as payload too.
    """
    if len(frame) - ETHERNET_HEADER <= mtu:
        return None
    split = _network_header(frame)
    if split is None:
        return None
    ethertype, offset = split
    # RFC 1122 3.2.2 / RFC 4443 2.4: never answer a link-layer broadcast or multicast;
    # a group source address is forged and has nobody to answer.
    if is_group_mac(frame[0:6]) or is_group_mac(frame[6:12]):
        return None
    ip_mtu = mtu - (offset - ETHERNET_HEADER)
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
    if len(packet) < IPV4_HEADER or packet[0] >> 4 != 4 or mtu < IPV4_MIN_MTU:
        return None
    header_length = (packet[0] & 0x0F) * 4
    total_length = int.from_bytes(packet[2:4], "big")
    if header_length < IPV4_HEADER or not header_length <= total_length <= len(packet):
        return None
    if total_length <= mtu:
        return None  # the IP packet fits; the frame only carries trailing bytes
    if internet_checksum(packet[:header_length]) != 0:
        return None  # a router drops a corrupt header without answering
    flags = int.from_bytes(packet[6:8], "big")
    if not flags & IPV4_DONT_FRAGMENT or flags & IPV4_FRAGMENT_OFFSET:
        return None  # may be fragmented, or a non-initial fragment (RFC 1122 3.2.2)
    if (
        packet[9] == PROTO_ICMP
        and total_length > header_length
        and packet[header_length] in ICMP_ERROR_TYPES
    ):
        return None
    source, destination = packet[12:16], packet[16:20]
    # Only a single host is answered, from a single host (RFC 1122 3.2.2): no
    # this-network, loopback, multicast or class E (which holds broadcast) on either side.
    if not _ipv4_unicast(source) or not _ipv4_unicast(destination):
        return None
    quote = packet[: min(header_length + ICMP_QUOTE_DATA, total_length)]
    icmp = bytearray(struct.pack("!BBHHH", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu) + quote)
    icmp[2:4] = internet_checksum(icmp).to_bytes(2, "big")
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,  # version 4, no options
            TOS_INTERNETWORK_CONTROL,
            IPV4_HEADER + len(icmp),
            0,  # identification: never fragmented, this small
            0,
            HOP_LIMIT,
            PROTO_ICMP,
            0,
            destination,
            source,
        )
    )
    header[10:12] = internet_checksum(header).to_bytes(2, "big")
    return bytes(header + icmp)


def _ipv4_unicast(address: bytes) -> bool:
    return address[0] not in (0, 127) and address[0] < 224


def _packet_too_big(packet: bytes, mtu: int) -> bytes | None:
    """ICMPv6 Packet Too Big (RFC 4443 3.2)."""
    if len(packet) < IPV6_HEADER or packet[0] >> 4 != 6:
        return None
    if mtu < IPV6_MIN_MTU:
        # IPv6 hosts never go below 1280 (RFC 8200 5): a smaller tunnel can only
        # let the underlay fragment.
        return None
    total_length = IPV6_HEADER + int.from_bytes(packet[4:6], "big")
    if not mtu < total_length <= len(packet):
        return None  # fits (or a jumbogram's zero length), or truncated
    if (
        packet[6] == PROTO_ICMPV6
        and total_length > IPV6_HEADER
        and packet[IPV6_HEADER] < ICMPV6_INFORMATIONAL
    ):
        return None  # RFC 4443 2.4 (e.1): no error about an error
    source, destination = packet[8:24], packet[24:40]
    if not _ipv6_unicast(source) or not _ipv6_unicast(destination):
        return None
    # RFC 4443 3.2: as much of the invoking packet as fits in a minimum MTU.
    quote = packet[: min(total_length, IPV6_MIN_MTU - IPV6_HEADER - ICMP_HEADER)]
    icmp = bytearray(struct.pack("!BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, mtu) + quote)
    # The checksum covers a pseudo-header of the reply's addresses (RFC 8200 8.1).
    pseudo = destination + source + struct.pack("!I3xB", len(icmp), PROTO_ICMPV6)
    icmp[2:4] = internet_checksum(pseudo + icmp).to_bytes(2, "big")
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, len(icmp), PROTO_ICMPV6, HOP_LIMIT, destination, source
    )
    return header + bytes(icmp)


def _ipv6_unicast(address: bytes) -> bool:
    # Not multicast (ff00::/8), not unspecified (::), not loopback (::1).
    return address[0] != 0xFF and int.from_bytes(address, "big") > 1


def internet_checksum(data: bytes | bytearray) -> int:
    """The one's-complement sum of RFC 1071. Over data holding a correct checksum
    it comes out 0."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
