"""Just enough of IPv4/IPv6 and Ethernet headers to route a packet and strip padding."""

from dataclasses import dataclass

ETHERNET_HEADER = 14


@dataclass(frozen=True)
class IPHeader:
    version: int
    source: bytes
    destination: bytes
    length: int  # the packet's true length, without tunnel padding


def parse_ip(packet: bytes) -> IPHeader | None:
    """The addresses and length of an IP packet, or None if it is not one."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        length = int.from_bytes(packet[2:4], "big")
        if 20 <= length <= len(packet):
            return IPHeader(4, packet[12:16], packet[16:20], length)
    elif version == 6 and len(packet) >= 40:
        length = int.from_bytes(packet[4:6], "big") + 40
        if length <= len(packet):
            return IPHeader(6, packet[8:24], packet[24:40], length)
    return None


def is_group_mac(mac: bytes) -> bool:
    """Broadcast and multicast MACs have the I/G bit set in their first octet."""
    return bool(mac[0] & 1)
