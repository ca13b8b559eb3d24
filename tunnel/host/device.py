"""TUN/TAP devices opened through /dev/net/tun (Documentation/networking/tuntap.rst).
The device lives as long as its file descriptor: closing it removes the device
with its addresses and routes, so teardown cannot leave them behind."""

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


class DeviceError(Exception):
    pass


def open_device(name: str, l2: bool, extra_flags: int = 0) -> int:
    """Open a TUN (L3) or TAP (L2) device by name and return its non-blocking fd."""
    flags = (IFF_TAP if l2 else IFF_TUN) | IFF_NO_PI | extra_flags
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceError(f"cannot open /dev/net/tun: {e.strerror}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError as e:
        os.close(fd)
        raise DeviceError(f"cannot create device {name}: {e.strerror}") from None
    return fd
