"""The four WireGuard message formats (whitepaper section 5.4): parsing from and
packing to bytes. Parsing never raises on hostile input except MessageError."""

import struct
from dataclasses import dataclass

from .constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MAC_SIZE,
    MARKER_L2,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
    TAG_SIZE,
    TRANSPORT_HEADER_SIZE,
)


class MessageError(ValueError):
    """A datagram that is not a well-formed WireGuard message."""


@dataclass(frozen=True)
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes
    l2: bool = False

    def pack(self) -> bytes:
        return (
            header(MESSAGE_INITIATION, self.l2)
            + struct.pack("<I", self.sender)
            + self.ephemeral
            + self.encrypted_static
            + self.encrypted_timestamp
            + self.mac1
            + self.mac2
        )


@dataclass(frozen=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes
    l2: bool = False

    def pack(self) -> bytes:
        return (
            header(MESSAGE_RESPONSE, self.l2)
            + struct.pack("<II", self.sender, self.receiver)
            + self.ephemeral
            + self.encrypted_nothing
            + self.mac1
            + self.mac2
        )


@dataclass(frozen=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes
    l2: bool = False

    def pack(self) -> bytes:
        return (
            header(MESSAGE_COOKIE_REPLY, self.l2)
            + struct.pack("<I", self.receiver)
            + self.nonce
            + self.encrypted_cookie
        )


@dataclass(frozen=True)
class Transport:
    receiver: int
    counter: int
    encrypted_packet: bytes
    l2: bool = False

    def pack(self) -> bytes:
        return (
            transport_prefix(self.receiver, self.l2)
            + self.counter.to_bytes(8, "little")
            + self.encrypted_packet
        )


Message = Initiation | Response | CookieReply | Transport

# Where mac1 and mac2 start: each MAC covers everything before it.
INITIATION_MAC1_OFFSET = INITIATION_SIZE - 2 * MAC_SIZE
RESPONSE_MAC1_OFFSET = RESPONSE_SIZE - 2 * MAC_SIZE


def header(message_type: int, l2: bool) -> bytes:
    return bytes((message_type, MARKER_L2 if l2 else 0, 0, 0))


def transport_prefix(receiver: int, l2: bool) -> bytes:
    """A transport message's first 8 bytes: its header and receiver index."""
    return header(MESSAGE_TRANSPORT, l2) + receiver.to_bytes(4, "little")


# A transport message's receiver index and counter, after its header.
TRANSPORT_FIELDS = struct.Struct("<IQ")


def parse(data: bytes) -> Message:
    """Parse one datagram; the header's reserved bytes must be zero, except the
    pyvpn L2 marker, which is reported as `l2` so a mode mismatch can be named."""
    if len(data) < 4:
        raise MessageError("datagram shorter than a message header")
    kind = data[0]
    if data[1] not in (0, MARKER_L2) or data[2] or data[3]:
        raise MessageError("reserved header bytes are not zero")
    l2 = data[1] == MARKER_L2
    if kind == MESSAGE_INITIATION:
        if len(data) != INITIATION_SIZE:
            raise MessageError("initiation has the wrong size")
        (sender,) = struct.unpack_from("<I", data, 4)
        return Initiation(
            sender, data[8:40], data[40:88], data[88:116], data[116:132], data[132:148], l2
        )
    if kind == MESSAGE_RESPONSE:
        if len(data) != RESPONSE_SIZE:
            raise MessageError("response has the wrong size")
        sender, receiver = struct.unpack_from("<II", data, 4)
        return Response(sender, receiver, data[12:44], data[44:60], data[60:76], data[76:92], l2)
    if kind == MESSAGE_COOKIE_REPLY:
        if len(data) != COOKIE_REPLY_SIZE:
            raise MessageError("cookie reply has the wrong size")
        (receiver,) = struct.unpack_from("<I", data, 4)
        return CookieReply(receiver, data[8:32], data[32:64], l2)
    if kind == MESSAGE_TRANSPORT:
        if len(data) < TRANSPORT_HEADER_SIZE + TAG_SIZE:
            raise MessageError("transport message shorter than header and tag")
        receiver, counter = TRANSPORT_FIELDS.unpack_from(data, 4)
        return Transport(receiver, counter, data[TRANSPORT_HEADER_SIZE:], l2)
    raise MessageError(f"unknown message type {kind}")
