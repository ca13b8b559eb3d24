"""Telling STUN messages (RFC 5389) apart from WireGuard's on one UDP socket.

A fleet host asks a STUN server for the public address of its WireGuard socket
from that very socket (tunnel/fleet/stun.py), so the answers arrive among
WireGuard's messages. RFC 5389 section 6 makes STUN recognisable: the two top
bits of the first byte are zero, bytes 4..7 hold the magic cookie, and the
length field (bytes 2..3) counts the attributes after the 20-byte header, in
whole 4-byte words. A WireGuard message has zeros in bytes 2 and 3 (the
reserved bytes of its header), so asking for a non-zero length that matches
the datagram keeps the two apart for good: a WireGuard initiation whose random
sender index happens to equal the cookie is still WireGuard's."""

import struct

from .constants import STUN_HEADER_SIZE, STUN_MAGIC_COOKIE

_HEADER = struct.Struct("!HHI")


def is_stun(data: bytes) -> bool:
    """Whether a datagram is a STUN message (with attributes) rather than WireGuard's."""
    if len(data) < STUN_HEADER_SIZE + 4:
        return False
    kind, length, cookie = _HEADER.unpack_from(data)
    return (
        cookie == STUN_MAGIC_COOKIE
        and not kind & 0xC000
        and length == len(data) - STUN_HEADER_SIZE
        and not length % 4
    )
