"""The clock every protocol timer runs on: CLOCK_BOOTTIME, as the kernel's
WireGuard measures keypair and handshake ages (ktime_get_coarse_boottime_ns),
so that Reject-After-Time counts the time a host spent suspended too. The
native plane's counters (native/internal.h now_ns) use the same clock, so
their timestamps and Python's compare."""

import time


def now() -> float:
    """Seconds on CLOCK_BOOTTIME."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
