"""The device as the kernel's link table sees it (rtnetlink(7)): a multicast
netlink socket on RTMGRP_LINK tells when the device is deleted (`ip link delete`,
the last step of `wg-quick down`) and when its MTU changes (`ip link set mtu`),
so a tunnel that does not own its device's setup can follow both. A raw socket,
not pyroute2: its reader sits in the tunnel's event loop, which pyroute2's own
loop cannot join."""

import errno
import socket
import struct
from dataclasses import dataclass

RTMGRP_LINK = 1  # <linux/rtnetlink.h>
RTM_NEWLINK = 16
RTM_DELLINK = 17
IFLA_MTU = 4  # <linux/if_link.h>
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTATTR = struct.Struct("=HH")  # length, type
U32 = struct.Struct("=I")
NLMSG_ALIGN = 4


@dataclass
class LinkState:
    """What the messages read so far say: deleted, and the latest MTU (None: unsaid)."""

    deleted: bool = False
    mtu: int | None = None


class LinkWatch:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            socket.NETLINK_ROUTE,
        )
        try:
            # Subscribed before the index is looked up: a deletion in between is heard.
            self.sock.bind((0, RTMGRP_LINK))
            self.index = socket.if_nametoindex(name)
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def read(self) -> LinkState:
        """Every message waiting on the socket, about this device."""
        state = LinkState()
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return state
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                # Messages were lost to a full buffer: ask the kernel directly.
                state.deleted = state.deleted or not self._exists()
                continue
            _parse(data, self.index, state)

    def _exists(self) -> bool:
        try:
            return socket.if_indextoname(self.index) == self.name
        except OSError:
            return False


def _parse(data: bytes, index: int, state: LinkState) -> None:
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind = NLMSGHDR.unpack_from(data, offset)[:2]
        if length < NLMSGHDR.size:
            return
        body = offset + NLMSGHDR.size
        ours = (
            kind in (RTM_NEWLINK, RTM_DELLINK)
            and body + IFINFOMSG.size <= offset + length
            and IFINFOMSG.unpack_from(data, body)[2] == index
        )
        if ours and kind == RTM_DELLINK:
            state.deleted = True
        elif ours:
            mtu = _attribute(data, body + IFINFOMSG.size, offset + length, IFLA_MTU)
            if mtu is not None and len(mtu) >= U32.size:
                state.mtu = U32.unpack_from(mtu)[0]
        offset += _aligned(length)


def _attribute(data: bytes, start: int, end: int, wanted: int) -> bytes | None:
    while start + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, start)
        if length < RTATTR.size:
            return None
        if kind == wanted:
            return data[start + RTATTR.size : start + length]
        start += _aligned(length)
    return None


def _aligned(n: int) -> int:
    return (n + NLMSG_ALIGN - 1) & ~(NLMSG_ALIGN - 1)
