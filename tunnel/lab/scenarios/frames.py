"""The frames LAN hosts send on their own, built byte by byte: ARP requests,
IPv6 neighbour solicitations, mDNS announcements and DHCP DISCOVERs.

A host here is an identity (a MAC, an IPv4 and an IPv6 address) that the chatter
generator sends from, so that 50 hosts cost one process, not 50 network stacks.
Every frame is a function of the side, the host's index and the subnets alone:
two runs send the same bytes.
"""

from __future__ import annotations

import ipaddress
import struct

from tunnel.core.l3 import internet_checksum

BROADCAST_MAC = b"\xff" * 6
ETHERTYPE_IPV4, ETHERTYPE_ARP, ETHERTYPE_IPV6 = 0x0800, 0x0806, 0x86DD
IPPROTO_UDP, IPPROTO_ICMPV6 = 17, 58
MDNS_PORT = 5353  # RFC 6762
MDNS_V4, MDNS_V6 = "224.0.0.251", "ff02::fb"
DHCP_SERVER_PORT, DHCP_CLIENT_PORT = 67, 68  # RFC 2131
ND_NEIGHBOR_SOLICIT = 135  # RFC 4861 4.3


def host_mac(side: int, index: int) -> bytes:
    """A locally administered unicast MAC: 02:5c:SIDE:00:HI:LO."""
    return bytes((0x02, 0x5C, side, 0, index >> 8 & 0xFF, index & 0xFF))


# Where the generated hosts' addresses start in their subnet, and how far apart the
# two sides' hosts are: both sides of a tap tunnel share one subnet (a /16).
FIRST_HOST, SIDE_SPAN = 16, 1024


def host_ipv4(subnet: str, side: int, index: int) -> str:
    return str(ipaddress.ip_network(subnet)[FIRST_HOST + side * SIDE_SPAN + index])


def host_ipv6(subnet: str, side: int, index: int) -> str:
    return str(ipaddress.ip_network(subnet)[FIRST_HOST + side * SIDE_SPAN + index])


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


def multicast_mac_v4(group: str) -> bytes:
    """RFC 1112 6.4: 01:00:5e and the group's low 23 bits."""
    low = int(ipaddress.IPv4Address(group)) & 0x7FFFFF
    return b"\x01\x00\x5e" + low.to_bytes(3, "big")


def multicast_mac_v6(group: str) -> bytes:
    """RFC 2464 7: 33:33 and the group's low 32 bits."""
    return b"\x33\x33" + ipaddress.IPv6Address(group).packed[-4:]


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes, ttl: int = 64) -> bytes:
    length = 8 + len(payload)
    source, destination = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    pseudo = source + destination + struct.pack("!BBH", 0, IPPROTO_UDP, length)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    udp = udp[:6] + struct.pack("!H", internet_checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, ttl, IPPROTO_UDP, 0, source, destination
    )
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + udp


def ipv6_packet(src: str, dst: str, next_header: int, payload: bytes, hops: int = 255) -> bytes:
    """An IPv6 packet whose UDP or ICMPv6 checksum (at `payload`'s usual offset) is filled in."""
    source, destination = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    pseudo = source + destination + struct.pack("!I3xB", len(payload), next_header)
    offset = 6 if next_header == IPPROTO_UDP else 2
    value = internet_checksum(pseudo + payload) or (0xFFFF if next_header == IPPROTO_UDP else 0)
    payload = payload[:offset] + struct.pack("!H", value) + payload[offset + 2 :]
    header = struct.pack("!IHBB", 6 << 28, len(payload), next_header, hops)
    return header + source + destination + payload


def arp_request(mac: bytes, ip: str, target: str) -> bytes:
    """Who has `target`? (RFC 826), broadcast."""
    body = struct.pack("!HHBBH", 1, ETHERTYPE_IPV4, 6, 4, 1)
    body += mac + ipaddress.IPv4Address(ip).packed + b"\0" * 6
    body += ipaddress.IPv4Address(target).packed
    return ethernet(BROADCAST_MAC, mac, ETHERTYPE_ARP, body)


def neighbour_solicitation(mac: bytes, ip: str, target: str) -> bytes:
    """Who has `target`? in IPv6 (RFC 4861 4.3), to its solicited-node group."""
    group = ipaddress.IPv6Address(
        int(ipaddress.IPv6Address("ff02::1:ff00:0")) | int(ipaddress.IPv6Address(target)) & 0xFFFFFF
    )
    icmp = struct.pack("!BBHI", ND_NEIGHBOR_SOLICIT, 0, 0, 0)
    icmp += ipaddress.IPv6Address(target).packed + b"\x01\x01" + mac  # source link-layer option
    packet = ipv6_packet(ip, str(group), IPPROTO_ICMPV6, icmp)
    return ethernet(multicast_mac_v6(str(group)), mac, ETHERTYPE_IPV6, packet)


def mdns_announcement(name: str, ip: str) -> bytes:
    """An unsolicited mDNS response (RFC 6762 8.3): NAME.local has address IP."""
    header = struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 0)
    labels = b"".join(bytes((len(p),)) + p.encode() for p in (name, "local")) + b"\0"
    v6 = ":" in ip
    rtype, rdata = (
        (28, ipaddress.IPv6Address(ip).packed) if v6 else (1, ipaddress.IPv4Address(ip).packed)
    )
    # Class IN with the cache-flush bit, TTL 120 s as RFC 6762 10 advises for address records.
    answer = labels + struct.pack("!HHIH", rtype, 0x8001, 120, len(rdata)) + rdata
    return header + answer


def mdns_v4(mac: bytes, ip: str, name: str) -> bytes:
    packet = ipv4_udp(ip, MDNS_V4, MDNS_PORT, MDNS_PORT, mdns_announcement(name, ip), ttl=255)
    return ethernet(multicast_mac_v4(MDNS_V4), mac, ETHERTYPE_IPV4, packet)


def mdns_v6(mac: bytes, ip: str, name: str) -> bytes:
    udp = struct.pack(
        "!HHHH", MDNS_PORT, MDNS_PORT, 8 + len(body := mdns_announcement(name, ip)), 0
    )
    packet = ipv6_packet(ip, MDNS_V6, IPPROTO_UDP, udp + body)
    return ethernet(multicast_mac_v6(MDNS_V6), mac, ETHERTYPE_IPV6, packet)


def dhcp_discover(mac: bytes, xid: int) -> bytes:
    """DHCPDISCOVER (RFC 2131 4.4.1) from 0.0.0.0 to the limited broadcast address."""
    body = struct.pack("!BBBBIHH", 1, 1, 6, 0, xid, 0, 0x8000)  # broadcast flag
    body += b"\0" * 16 + mac + b"\0" * 10 + b"\0" * 192  # ciaddr..giaddr, chaddr, sname+file
    body += b"\x63\x82\x53\x63"  # magic cookie
    body += b"\x35\x01\x01"  # option 53: DHCPDISCOVER
    body += b"\x37\x03\x01\x03\x06"  # option 55: subnet mask, router, DNS
    body += b"\xff"
    packet = ipv4_udp("0.0.0.0", "255.255.255.255", DHCP_CLIENT_PORT, DHCP_SERVER_PORT, body)
    return ethernet(BROADCAST_MAC, mac, ETHERTYPE_IPV4, packet)


def host_chatter(side: int, index: int, hosts: int, subnet4: str, subnet6: str) -> list[bytes]:
    """What host `index` of `hosts` on one LAN sends in one round: it asks for its
    neighbour (the next host) by ARP and by neighbour discovery, announces its
    names over mDNS in both families, and looks for a DHCP server."""
    mac = host_mac(side, index)
    ip4, ip6 = host_ipv4(subnet4, side, index), host_ipv6(subnet6, side, index)
    other = (index + 1) % hosts
    name = f"host-{side}-{index}"
    return [
        arp_request(mac, ip4, host_ipv4(subnet4, side, other)),
        neighbour_solicitation(mac, ip6, host_ipv6(subnet6, side, other)),
        mdns_v4(mac, ip4, name),
        mdns_v6(mac, ip6, name),
        dhcp_discover(mac, side << 16 | index),
    ]
