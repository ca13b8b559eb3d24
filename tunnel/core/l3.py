"""L3, what tun mode needs of IP: just enough of the IPv4 and IPv6 headers to
route a packet and strip tunnel padding, and ICMP errors about IP packets.

ICMP errors are built as a router on the path would send them, and obey the
rules every such error obeys (RFC 1122 3.2.2, RFC 4443 2.4): none about
an ICMP error or a non-initial fragment, none to or from anything but a single
host, none about an IPv4 packet whose header is corrupt.

Two users: tap's "too big" answers (core/l2.py) and tun's "unreachable" for
a packet no peer's allowed IPs cover. That is what kernel WireGuard answers there
(drivers/net/wireguard/device.c, wg_xmit: ICMP_HOST_UNREACH, ICMPV6_ADDR_UNREACH),
so a connect() fails at once instead of timing out.

A reply comes from the address the packet was sent to. The tunnel has no address
of its own to send from: the kernel takes a packet from the device whose source is
one of its own addresses for a martian and drops it. Hosts accept an error from
any source whose quote matches one of their packets.

Pure functions over bytes, no state."""

import struct

# (version, source, destination, length): the addresses as bytes, and the
# packet's true length, without tunnel padding. A plain tuple, as it is made for
# every packet: a dataclass costs three times as much.
IPHeader = tuple[int, bytes, bytes, int]


def parse_ip(packet: bytes) -> IPHeader | None:
    """The version, addresses and length of an IP packet, or None if it is not one."""
    size = len(packet)
    if size >= 20:
        version = packet[0] >> 4
        # Lengths from two indexed bytes: int.from_bytes on a slice costs twice.
        if version == 4:
            length = packet[2] << 8 | packet[3]
            if 20 <= length <= size:
                return 4, packet[12:16], packet[16:20], length
        elif version == 6 and size >= 40:
            length = (packet[4] << 8 | packet[5]) + 40
            if length <= size:
                return 6, packet[8:24], packet[24:40], length
    return None


IPV4_HEADER = 20
IPV4_FRAGMENT_OFFSET = 0x1FFF
PROTO_ICMP = 1
ICMP_DEST_UNREACH = 3
ICMP_HOST_UNREACH = 1
# RFC 1122 3.2.2: no ICMP error about an ICMP error (unreachable, source quench,
# redirect, time exceeded, parameter problem).
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
ICMP_HEADER = 8
ICMP_QUOTE_DATA = 8  # RFC 792: the IP header and the first 64 bits of the data
TOS_INTERNETWORK_CONTROL = 0xC0  # the precedence routers give their ICMP errors

IPV6_HEADER = 40
IPV6_MIN_MTU = 1280  # RFC 8200 section 5
PROTO_ICMPV6 = 58
ICMPV6_DEST_UNREACH = 1
ICMPV6_ADDR_UNREACH = 3
ICMPV6_INFORMATIONAL = 128  # types below are errors (RFC 4443 2.1)

HOP_LIMIT = 64


def unreachable(packet: bytes) -> bytes | None:
    """The error for an IP packet that no peer takes (host unreachable, address
    unreachable), or None where no error may be sent."""
    version = packet[0] >> 4 if packet else 0
    if version == 4:
        return error_v4(packet, ICMP_DEST_UNREACH, ICMP_HOST_UNREACH, 0)
    if version == 6:
        return error_v6(packet, ICMPV6_DEST_UNREACH, ICMPV6_ADDR_UNREACH, 0)
    return None


def error_v4(packet: bytes, kind: int, code: int, rest: int) -> bytes | None:
    """An ICMP error (`kind`, `code`, the 32 bits after the checksum) about an IPv4
    packet, or None where RFC 1122 forbids one or the packet is not sound."""
    if len(packet) < IPV4_HEADER or packet[0] >> 4 != 4:
        return None
    header_length = (packet[0] & 0x0F) * 4
    total_length = int.from_bytes(packet[2:4], "big")
    if header_length < IPV4_HEADER or not header_length <= total_length <= len(packet):
        return None
    if internet_checksum(packet[:header_length]) != 0:
        return None  # a router drops a corrupt header without answering
    if int.from_bytes(packet[6:8], "big") & IPV4_FRAGMENT_OFFSET:
        return None  # a non-initial fragment
    if (
        packet[9] == PROTO_ICMP
        and total_length > header_length
        and packet[header_length] in ICMP_ERROR_TYPES
    ):
        return None
    source, destination = packet[12:16], packet[16:20]
    # Only a single host is answered, from a single host: no this-network, loopback,
    # multicast or class E (which holds broadcast) on either side.
    if not _ipv4_unicast(source) or not _ipv4_unicast(destination):
        return None
    quote = packet[: min(header_length + ICMP_QUOTE_DATA, total_length)]
    icmp = bytearray(struct.pack("!BBHI", kind, code, 0, rest) + quote)
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


def error_v6(packet: bytes, kind: int, code: int, rest: int) -> bytes | None:
    """An ICMPv6 error (`kind`, `code`, the 32 bits after the checksum) about an IPv6
    packet, or None where RFC 4443 2.4 forbids one or the packet is cut short."""
    if len(packet) < IPV6_HEADER or packet[0] >> 4 != 6:
        return None
    total_length = IPV6_HEADER + int.from_bytes(packet[4:6], "big")
    if total_length > len(packet):
        return None
    if (
        packet[6] == PROTO_ICMPV6
        and total_length > IPV6_HEADER
        and packet[IPV6_HEADER] < ICMPV6_INFORMATIONAL
    ):
        return None  # (e.1): no error about an error
    source, destination = packet[8:24], packet[24:40]
    if not _ipv6_unicast(source) or not _ipv6_unicast(destination):
        return None
    # RFC 4443 3.x: as much of the invoking packet as fits in a minimum MTU.
    quote = packet[: min(total_length, IPV6_MIN_MTU - IPV6_HEADER - ICMP_HEADER)]
    icmp = bytearray(struct.pack("!BBHI", kind, code, 0, rest) + quote)
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
