"""tunnel/core/l2.py and tunnel/core/l3.py: the ICMP errors pyvpn writes back into its
device, tap's for frames too big for the tunnel and tun's for packets no peer
takes. Checksums are checked with an independent one's-complement sum (RFC 1071's
verification: over a message holding its checksum, the sum is all ones); the
namespace tests show real Linux hosts accept the replies."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.core.l2 import too_big_reply
from tunnel.core.l3 import internet_checksum, unreachable

from .. import packets

MTU = 1406
MAC_X = bytes.fromhex("020000000001")  # the sender
MAC_Y = bytes.fromhex("020000000002")  # the host it sends to
IP_X, IP_Y = bytes([10, 30, 0, 1]), bytes([10, 30, 0, 2])
IP6_X = bytes.fromhex("fd300000000000000000000000000001")
IP6_Y = bytes.fromhex("fe800000000000000000000000000002")


def checksum_ok(data: bytes) -> bool:
    """RFC 1071's verification, by the tests' own sum (tests/packets.py), not the
    code's: over a message holding its checksum, the sum is all ones."""
    return packets.csum(data) == 0


def ipv4(
    size: int,
    *,
    df: bool = True,
    offset: int = 0,
    proto: int = 6,
    src: bytes = IP_X,
    dst: bytes = IP_Y,
    options: bytes = b"",
    payload: bytes = b"",
) -> bytes:
    """An IPv4 packet of `size` bytes, its body `payload` then filler."""
    body = (payload + bytes(range(256)) * 64)[: size - 20 - len(options)]
    flags = (0x4000 if df else 0) | offset
    return packets.ipv4(src, dst, proto, body, ident=0x1234, flags=flags, options=options)


def ipv6(
    size: int, *, next_header: int = 6, src: bytes = IP6_X, dst: bytes = IP6_Y, payload: bytes = b""
) -> bytes:
    body = (payload + bytes(range(256)) * 64)[: size - 40]
    return struct.pack("!IHBB16s16s", 6 << 28, size - 40, next_header, 64, src, dst) + body


def frame(packet: bytes, ethertype: int, dst: bytes = MAC_Y, tags: bytes = b"") -> bytes:
    return packets.ether(dst, MAC_X, packet, tags, ethertype)


def test_checksum_matches_rfc1071_example():
    # RFC 1071 3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7220d")) == 0


def test_ipv4_with_dont_fragment_gets_fragmentation_needed():
    original = ipv4(1500)
    reply = too_big_reply(frame(original, 0x0800), MTU)
    assert reply is not None
    assert reply[:6] == MAC_X and reply[6:12] == MAC_Y and reply[12:14] == b"\x08\x00"
    ip = reply[14:]
    assert ip[0] == 0x45 and ip[9] == 1 and ip[8] == 64
    assert int.from_bytes(ip[2:4], "big") == len(ip) == 20 + 8 + 28
    assert ip[12:16] == IP_Y and ip[16:20] == IP_X  # from the address it was sent to
    assert checksum_ok(ip[:20])
    icmp = ip[20:]
    assert icmp[0] == 3 and icmp[1] == 4  # destination unreachable, fragmentation needed
    assert icmp[4:6] == b"\0\0" and int.from_bytes(icmp[6:8], "big") == MTU
    assert icmp[8:] == original[:28]  # RFC 792: IP header + 64 bits of data
    assert checksum_ok(icmp)


def test_ipv4_quote_covers_options():
    original = ipv4(1500, options=b"\x01\x01\x01\x00")  # 3 NOPs + end of options
    reply = too_big_reply(frame(original, 0x0800), MTU)
    assert reply is not None and reply[14 + 28 :] == original[:32]
    assert checksum_ok(reply[14 + 20 :])


def test_icmp_echo_with_dont_fragment_is_answered():
    # ping -M do: an ICMP *query* is answered; only errors about errors are not.
    original = ipv4(1500, proto=1, payload=b"\x08\x00" + bytes(2000))
    assert too_big_reply(frame(original, 0x0800), MTU) is not None


def test_fitting_frames_are_not_touched():
    assert too_big_reply(frame(ipv4(MTU), 0x0800), MTU) is None
    assert too_big_reply(frame(ipv6(MTU), 0x86DD), MTU) is None
    # An oversized frame whose IP packet fits (trailing bytes): nothing to report.
    assert too_big_reply(frame(ipv4(1000) + bytes(600), 0x0800), MTU) is None


def test_what_gets_no_icmp_error():
    cases = {
        "may be fragmented": frame(ipv4(1500, df=False), 0x0800),
        "non-initial fragment": frame(ipv4(1500, offset=100), 0x0800),
        "error about an error": frame(ipv4(1500, proto=1, payload=b"\x03\x04"), 0x0800),
        "multicast destination": frame(ipv4(1500, dst=bytes([239, 1, 2, 3])), 0x0800),
        "broadcast destination": frame(ipv4(1500, dst=bytes([255] * 4)), 0x0800),
        "unspecified source": frame(ipv4(1500, src=bytes(4)), 0x0800),
        "loopback source": frame(ipv4(1500, src=bytes([127, 0, 0, 1])), 0x0800),
        "link-layer broadcast": frame(ipv4(1500), 0x0800, dst=b"\xff" * 6),
        "link-layer multicast": frame(ipv4(1500), 0x0800, dst=bytes.fromhex("01005e010203")),
        "not IP": frame(bytes(1500), 0x88B5),
        "ARP": frame(bytes(1500), 0x0806),
        "IPv4 ethertype, not IPv4": frame(ipv6(1500), 0x0800),
        "truncated IPv4": frame(ipv4(1500)[:1450], 0x0800),
        "IPv6 error about an error": frame(ipv6(1500, next_header=58, payload=b"\x01"), 0x86DD),
        "IPv6 multicast destination": frame(ipv6(1500, dst=b"\xff\x02" + bytes(14)), 0x86DD),
        "IPv6 unspecified source": frame(ipv6(1500, src=bytes(16)), 0x86DD),
    }
    for why, f in cases.items():
        assert too_big_reply(f, MTU) is None, why


def test_corrupt_ipv4_header_gets_no_answer():
    original = bytearray(ipv4(1500))
    original[8] ^= 0xFF  # TTL changed, checksum not
    assert too_big_reply(frame(bytes(original), 0x0800), MTU) is None


def test_ipv6_gets_packet_too_big_quoting_up_to_1280_bytes():
    original = ipv6(1500, payload=b"marker")
    reply = too_big_reply(frame(original, 0x86DD), MTU)
    assert reply is not None
    assert reply[:6] == MAC_X and reply[6:12] == MAC_Y and reply[12:14] == b"\x86\xdd"
    ip = reply[14:]
    assert len(ip) == 1280  # RFC 4443 3.2: as much as fits in the minimum MTU
    assert ip[0] >> 4 == 6 and ip[6] == 58 and ip[7] == 64
    assert int.from_bytes(ip[4:6], "big") == len(ip) - 40
    assert ip[8:24] == IP6_Y and ip[24:40] == IP6_X
    icmp = ip[40:]
    assert icmp[0] == 2 and icmp[1] == 0 and int.from_bytes(icmp[4:8], "big") == MTU
    assert icmp[8:] == original[: 1280 - 48]
    pseudo = ip[8:40] + struct.pack("!I3xB", len(icmp), 58)
    assert checksum_ok(pseudo + icmp)


def test_ipv6_echo_request_is_answered():
    # ping -M do: a query is answered, even one just over the minimum MTU.
    original = ipv6(1281, next_header=58, payload=b"\x80\x00")
    reply = too_big_reply(frame(original, 0x86DD), 1280)
    assert reply is not None and reply[14 + 48 :] == original[: 1280 - 48]
    assert int.from_bytes(reply[14 + 44 : 14 + 48], "big") == 1280


def test_ipv6_below_its_minimum_mtu_is_left_to_underlay_fragmentation():
    assert too_big_reply(frame(ipv6(1500), 0x86DD), 1200) is None
    assert too_big_reply(frame(ipv4(1500), 0x0800), 1200) is not None


def test_vlan_tags_are_kept_and_counted_against_the_mtu():
    for tags in (bytes.fromhex("8100000a"), bytes.fromhex("88a8000b8100000a")):
        # The IP packet plus the tags must fit: 1400 + tags > 1406 - nothing else.
        size = MTU - len(tags) + 1
        reply = too_big_reply(frame(ipv4(size), 0x0800, tags=tags), MTU)
        assert reply is not None
        assert reply[12 : 12 + len(tags)] == tags
        assert reply[12 + len(tags) : 14 + len(tags)] == b"\x08\x00"
        icmp = reply[14 + len(tags) + 20 :]
        assert int.from_bytes(icmp[6:8], "big") == MTU - len(tags)
        assert checksum_ok(icmp)
        reply6 = too_big_reply(frame(ipv6(1500), 0x86DD, tags=tags), MTU)
        assert reply6 is not None and reply6[12 : 12 + len(tags)] == tags
        assert int.from_bytes(reply6[14 + len(tags) + 44 : 14 + len(tags) + 48], "big") == (
            MTU - len(tags)
        )
    # Three tags are more than any switch stacks: left alone.
    three = bytes.fromhex("88a8000b8100000a8100000c")
    assert too_big_reply(frame(ipv4(1500), 0x0800, tags=three), MTU) is None


def check_reply(sent: bytes, mtu: int, reply: bytes | None) -> None:
    """What any answer to `sent` must be: the error a router with a next hop of
    `mtu` would send, back to the sender on its VLAN, its checksums right, quoting
    the start of the packet, and no bigger than its family's minimum MTU."""
    if reply is None:
        return
    assert len(sent) - 14 > mtu  # only a frame too big is answered
    assert reply[:6] == sent[6:12] and reply[6:12] == sent[:6]
    offset = 14
    while sent[offset - 2 : offset] in (b"\x81\x00", b"\x88\xa8"):
        offset += 4
    assert reply[12:offset] == sent[12:offset]  # tags and ethertype kept
    ip, packet, ip_mtu = reply[offset:], sent[offset:], mtu - (offset - 14)
    if sent[offset - 2 : offset] == b"\x08\x00":
        assert ip[0] == 0x45 and ip[9] == 1 and int.from_bytes(ip[2:4], "big") == len(ip)
        assert ip[12:16] == packet[16:20] and ip[16:20] == packet[12:16]
        assert checksum_ok(ip[:20]) and checksum_ok(ip[20:])
        assert ip[20:22] == b"\x03\x04" and int.from_bytes(ip[26:28], "big") == ip_mtu
        # RFC 792: the header and 64 bits of data, but no more than the packet holds.
        quoted = min((packet[0] & 0x0F) * 4 + 8, int.from_bytes(packet[2:4], "big"))
        assert ip[28:] == packet[:quoted]
        assert len(ip) <= 576  # RFC 1812 4.3.2.3
    else:
        assert sent[offset - 2 : offset] == b"\x86\xdd"
        assert ip[0] >> 4 == 6 and ip[6] == 58 and int.from_bytes(ip[4:6], "big") == len(ip) - 40
        assert ip[8:24] == packet[24:40] and ip[24:40] == packet[8:24]
        assert checksum_ok(ip[8:40] + struct.pack("!I3xB", len(ip) - 40, 58) + ip[40:])
        assert ip[40:42] == b"\x02\x00" and int.from_bytes(ip[44:48], "big") == ip_mtu
        assert ip[48:] == packet[: len(ip) - 48]
        assert len(ip) <= 1280  # RFC 4443 2.4 (c)


def mostly(draw, usual, other: st.SearchStrategy):
    """`usual` three times in four, else anything `other` gives."""
    return usual if draw(st.integers(0, 3)) else draw(other)


def address(draw, size: int) -> bytes:
    """Unicast mostly, but also multicast, loopback, unspecified, broadcast."""
    first = mostly(draw, 10, st.sampled_from((0, 127, 224, 255)))
    return bytes([first]) + draw(st.binary(min_size=size - 1, max_size=size - 1))


@st.composite
def too_big(draw) -> tuple[bytes, int]:
    """A frame and an MTU around its size, the frame one that often deserves an
    answer: IP of either version under up to three tags (more than are answered),
    its header fields, lengths and addresses mostly sound but any value at times."""
    tags = b"".join(
        draw(st.sampled_from((b"\x81\x00", b"\x88\xa8"))) + draw(st.binary(min_size=2, max_size=2))
        for _ in range(mostly(draw, draw(st.integers(0, 2)), st.just(3)))
    )
    mac = st.binary(min_size=6, max_size=6)  # a group address at times
    frame = mostly(draw, MAC_Y, mac) + mostly(draw, MAC_X, mac) + tags
    # The first bytes vary (an ICMP type, say); the length matters more than the rest.
    size = mostly(draw, draw(st.integers(1240, 1600)), st.integers(0, 1600))
    body = draw(st.binary(max_size=8)) + bytes(size)
    if draw(st.booleans()):
        options = bytes(4 * draw(st.integers(0, 10)))
        ihl = 5 + len(options) // 4
        header = bytearray(
            struct.pack(
                "!BBHHHBB2s4s4s",
                mostly(draw, 0x40 | ihl, st.integers(0, 255)),
                0,
                mostly(draw, 20 + len(options) + len(body), st.integers(0, 0xFFFF)),
                0,
                mostly(draw, 0x4000, st.integers(0, 0xFFFF)),  # don't fragment
                64,
                mostly(draw, 6, st.sampled_from((1, 17, 58, 255))),
                b"\0\0",
                address(draw, 4),
                address(draw, 4),
            )
            + options
        )
        if draw(st.integers(0, 9)):
            header[10:12] = internet_checksum(header[: (header[0] & 0x0F) * 4]).to_bytes(2, "big")
        frame += b"\x08\x00" + header + body
    else:
        frame += b"\x86\xdd" + struct.pack(
            "!IHBB16s16s",
            6 << 28,
            mostly(draw, len(body), st.integers(0, 0xFFFF)),
            mostly(draw, 6, st.sampled_from((1, 17, 58, 255))),
            64,
            address(draw, 16),
            address(draw, 16),
        )
        frame += body
    return frame, max(
        0, len(frame) - 14 - mostly(draw, draw(st.integers(1, 12)), st.integers(-8, 1000))
    )


@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=70000))
def test_arbitrary_bytes_get_no_answer_or_a_sound_one(data, mtu):
    check_reply(data, mtu, too_big_reply(data, mtu))


@settings(max_examples=500)  # a few answers in every hundred cases are tagged
@given(too_big())
def test_any_answer_fits_its_family_minimum_mtu_checksums_and_quotes_the_packet(case):
    sent, mtu = case
    check_reply(sent, mtu, too_big_reply(sent, mtu))


@given(
    st.integers(min_value=20, max_value=3000),
    st.integers(min_value=576, max_value=2000),
    st.binary(min_size=0, max_size=64),
    st.booleans(),
)
def test_every_reply_is_well_formed(size, mtu, payload, v6):
    if v6:
        size = max(size, 40)
        sent = frame(ipv6(size, next_header=58, payload=b"\x80" + payload), 0x86DD)
    else:
        sent = frame(ipv4(size, proto=1, payload=b"\x08" + payload), 0x0800)
    reply = too_big_reply(sent, mtu)
    ip_mtu_limit = 1280 if v6 else 68
    assert (reply is None) == (size <= mtu or mtu < ip_mtu_limit)
    check_reply(sent, mtu, reply)


def test_a_packet_no_peer_takes_gets_host_unreachable():
    original = ipv4(600, proto=17)
    reply = unreachable(original)
    assert reply is not None
    assert reply[0] == 0x45 and reply[9] == 1 and checksum_ok(reply[:20])
    assert reply[12:16] == IP_Y and reply[16:20] == IP_X  # from the address it was sent to
    assert int.from_bytes(reply[2:4], "big") == len(reply) == 20 + 8 + 28
    icmp = reply[20:]
    assert icmp[:2] == b"\x03\x01" and icmp[4:8] == bytes(4)  # host unreachable
    assert icmp[8:] == original[:28] and checksum_ok(icmp)


def test_an_ipv6_packet_no_peer_takes_gets_address_unreachable():
    dst = bytes.fromhex("fd300000000000000000000000000099")
    original = ipv6(1400, next_header=17, dst=dst)
    reply = unreachable(original)
    assert reply is not None and reply[6] == 58
    assert reply[8:24] == dst and reply[24:40] == IP6_X
    icmp = reply[40:]
    assert icmp[:2] == b"\x01\x03" and icmp[4:8] == bytes(4)  # address unreachable
    assert icmp[8:] == original[: 1280 - 48]  # as much as fits in 1280 bytes
    pseudo = dst + IP6_X + struct.pack("!I3xB", len(icmp), 58)
    assert checksum_ok(pseudo + icmp)


def test_what_gets_no_unreachable():
    cases = {
        "non-initial fragment": ipv4(600, offset=100),
        "error about an error": ipv4(600, proto=1, payload=b"\x03\x01"),
        "multicast destination": ipv4(600, dst=bytes([224, 0, 0, 251])),
        "truncated": ipv4(600)[:500],
        "IPv6 router solicitation": ipv6(56, next_header=58, dst=b"\xff\x02" + bytes(13) + b"\x02"),
        "not IP": bytes(60),
        "empty": b"",
    }
    for why, packet in cases.items():
        assert unreachable(packet) is None, why


@given(st.binary(max_size=200))
def test_unreachable_takes_any_bytes(data):
    reply = unreachable(data)
    if reply is not None:  # then the input was a sound IP packet of the same version
        assert reply[0] >> 4 == data[0] >> 4
        assert reply[0] >> 4 == 6 or checksum_ok(reply[:20])
