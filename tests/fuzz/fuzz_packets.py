"""atheris: IP and Ethernet as the core reads them (tunnel/core/l3.py and l2.py):
IP parsing, the ICMP unreachable for a packet, and the path-MTU answer for a
frame, at any MTU, never raise, and what they build is well formed."""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel.core import l2, l3
    from tunnel.protocol.constants import MAX_MTU, MIN_MTU


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mtu = fdp.ConsumeIntInRange(MIN_MTU, MAX_MTU)
    packet = fdp.ConsumeBytes(fdp.remaining_bytes())
    header = l3.parse_ip(packet)
    if header is not None:
        assert header[3] <= len(packet)
    reply = l3.unreachable(packet)
    if reply is not None:
        assert l3.parse_ip(reply) is not None
    frame = l2.too_big_reply(packet, mtu)
    if frame is not None:
        assert len(frame) > 14 and not l2.is_group_mac(frame[0:6])


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
