"""Packet and frame builders (RFC 791, 793, 768, IEEE 802.1Q), independent of the
code under test, for the tests that hand-craft what a kernel or a peer would send."""

import socket
import struct

VLAN = 0x8100  # IEEE 802.1Q
QINQ = 0x88A8  # IEEE 802.1ad, the outer tag of two
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1  # <linux/virtio_net.h>
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP_L4 = 5


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip4(a: str) -> bytes:
    return socket.inet_aton(a)


def ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    l4: bytes,
    ident: int = 7,
    flags: int = 0x4000,
    options: bytes = b"",
    ttl: int = 64,
    checksum: bool = True,
) -> bytes:
    """`flags` is the flags and fragment offset field (default: don't fragment)."""
    ihl = (20 + len(options)) // 4
    total = 4 * ihl + len(l4)
    hdr = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, flags, ttl, proto, 0, src, dst)
        + options
    )
    if checksum:
        hdr[10:12] = struct.pack("!H", csum(bytes(hdr)))
    return bytes(hdr) + l4


def ipv4_packet(src: str, dst: str, payload: bytes = b"x" * 20) -> bytes:
    """An IPv4 packet for tests that need only its addresses and payload. Its header
    is all zeros but for those (no checksum, TTL 0), so no router would answer it:
    where no peer takes it, pyvpn sends no ICMP error back, and a test sees only
    what the tunnel sends."""
    return ipv4(ip4(src), ip4(dst), 0, payload, ident=0, flags=0, ttl=0, checksum=False)


def pseudo4(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, proto, length)


def udp_packet(src: str, dst: str, payload: bytes, sport: int = 4000, dport: int = 5000) -> bytes:
    s, d = ip4(src), ip4(dst)
    l4 = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    l4[6:8] = struct.pack("!H", csum(pseudo4(s, d, 17, len(l4)) + bytes(l4)) or 0xFFFF)
    return ipv4(s, d, 17, bytes(l4))


def tcp_segment(
    src: str, dst: str, seq: int, payload: bytes, flags: int = 0x10, ack: int = 1, opts: bytes = b""
) -> bytes:
    s, d = ip4(src), ip4(dst)
    doff = (20 + len(opts)) // 4
    l4 = bytearray(
        struct.pack("!HHIIBBHHH", 1234, 80, seq, ack, doff << 4, flags, 65535, 0, 0)
        + opts
        + payload
    )
    l4[16:18] = struct.pack("!H", csum(pseudo4(s, d, 6, len(l4)) + bytes(l4)))
    return ipv4(s, d, 6, bytes(l4))


def partial_tcp_csum(packet: bytes) -> bytes:
    """An IPv4 TCP packet as a kernel hands it over for checksum offload
    (CHECKSUM_PARTIAL): the field holds the folded pseudo-header sum."""
    p = bytearray(packet)
    p[36:38] = struct.pack("!H", ~csum(pseudo4(p[12:16], p[16:20], 6, len(p) - 20)) & 0xFFFF)
    return bytes(p)


def vlan_tag(vid: int, tpid: int = VLAN) -> bytes:
    return struct.pack("!HH", tpid, vid)


def ether(
    dst: bytes, src: bytes, payload: bytes = b"x" * 50, tags: bytes = b"", ethertype: int = 0x0800
) -> bytes:
    """An Ethernet frame (IPv4 by default), behind `tags` (vlan_tag()s, outermost first)."""
    return dst + src + tags + ethertype.to_bytes(2, "big") + payload


def virtio_net_hdr(gso_type: int, hdr_len: int, gso_size: int, csum_start: int) -> bytes:
    """A TCP offload header as TUN/TAP and PACKET_VNET_HDR use it (little-endian)."""
    return struct.pack(
        "<BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hdr_len, gso_size, csum_start, 16
    )
