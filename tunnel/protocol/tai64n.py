"""TAI64N timestamps (cr.yp.to/libtai/tai64.html) as carried in initiations:
12 big-endian bytes, 2^62 + seconds then nanoseconds, compared bytewise."""

import struct

TAI64_EPOCH = 2**62 + 10  # TAI is ahead of UTC by 10 s at the 1970 epoch
# Like wireguard-go, round nanoseconds down so the timestamp does not leak a
# fine-grained clock that could fingerprint the host.
WHITENER_NS = 0x1000000


def tai64n(unix_seconds: float) -> bytes:
    seconds = int(unix_seconds)
    nanos = int((unix_seconds - seconds) * 1e9)
    nanos -= nanos % WHITENER_NS
    return struct.pack(">QI", TAI64_EPOCH + seconds, nanos)
