"""The underlay UDP socket: one dual-stack socket for IPv4 and IPv6 peers, and the
conversion between its socket addresses and the core's plain (host, port) pairs."""

import errno
import functools
import ipaddress
import logging
import re
import socket
import struct

from tunnel.protocol.address import Address, format_address

log = logging.getLogger("pyvpn")

SOCKET_BUFFER = 4 << 20  # room for bursts while the event loop is busy


class SocketError(Exception):
    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = code


def open_socket(port: int) -> socket.socket:
    """Bind [::]:port accepting IPv4 too, or 0.0.0.0:port where IPv6 is disabled."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        address = ("0.0.0.0", port)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise SocketError(f"cannot listen on UDP port {port}: {e.strerror}", e.errno) from None
    sock.setblocking(False)
    return sock


# Both conversions are memoized: a peer sends from one address for a long time, and
# parsing the address text of every datagram was a fifth of the Python plane's CPU
# (py-spy). The caches are bounded, so a flood from many sources only churns them;
# a hub's peers, each at its own endpoint, fit (a few MB for this many).
ADDRESS_CACHE = 16384


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def from_sockaddr(sockaddr: tuple) -> Address:
    host = sockaddr[0].split("%")[0]
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return (str(ip.ipv4_mapped), sockaddr[1])
    return (str(ip), sockaddr[1])


def to_sockaddr(sock: socket.socket, address: Address) -> tuple:
    return _sockaddr(sock.family, address)


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def _sockaddr(family: int, address: Address) -> tuple:
    host, port = address
    if family == socket.AF_INET6 and ipaddress.ip_address(host).version == 4:
        return ("::ffff:" + host, port)
    return (host, port)


def split_address(text: str) -> tuple[str, int]:
    """host:port or [IPv6]:port into (host, port); ValueError says what is wrong."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not host:port (IPv6 as [addr]:port)")
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return match.group(1) or match.group(3), port


# getsockopt SO_MEMINFO: the socket's memory figures, u32 each, the last of them
# the datagrams dropped for a full receive buffer (<linux/sock_diag.h>).
SO_MEMINFO = 55
SK_MEMINFO = struct.Struct("=9I")


def drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped because the socket's receive buffer was full."""
    return SK_MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, SK_MEMINFO.size))[8]


def set_mark(sock: socket.socket, mark: int) -> None:
    """The fwmark on every datagram the tunnel sends (wg's fwmark, for policy routing)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)


def mark(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)


def resolve(host: str, port: int) -> Address:
    """An endpoint's address: a name resolved (the first answer, as wg takes it), a
    literal as it is. Raises OSError (socket.gaierror) or UnicodeError."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    return (str(ipaddress.ip_address(info[0][4][0])), port)


def is_name(host: str) -> bool:
    """A host name rather than an address literal: what can be resolved again."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def send_all(sock: socket.socket, address: Address, datagrams: list[bytes]) -> None:
    """Send datagrams to one address; a failure (no route, buffer full) is the
    loss UDP allows."""
    sockaddr, sendto = to_sockaddr(sock, address), sock.sendto
    for data in datagrams:
        try:
            sendto(data, sockaddr)
        except OSError as e:
            log.debug("send to %s failed: %s", format_address(address), e.strerror)
