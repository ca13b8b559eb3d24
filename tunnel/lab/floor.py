"""The floor of any Python tunnel, for `pyvpn bench`: a bare TUN <-> UDP forwarder
sealing each packet with ChaCha20-Poly1305 under one fixed key, on uvloop. No
handshake, no replay window, no routing, no timers: not a VPN, a reference. What
it costs is the least a Python tunnel pays per packet; what pyvpn's Python plane
costs beyond it is the protocol's work.

    python -m tunnel.lab.floor NAME ADDRESS/PREFIX MTU LOCAL_PORT PEER:PORT KEY_HEX
"""

import asyncio
import contextlib
import ipaddress
import os
import socket
import sys

import uvloop
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunnel.host import device, netlink
from tunnel.host.udp import split_address

BATCH = 64  # packets per wakeup, as the Python plane reads them


def serve(name: str, address: str, mtu: int, port: int, peer: str, key: bytes) -> None:
    fd = device.open_device(name, l2=False)
    netlink.configure(name, mtu, [ipaddress.ip_interface(address)], [], None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    # Not connect()ed: a connected socket reports the ICMP errors of datagrams sent
    # before the peer was up, and uvloop stops watching a socket in error.
    peer_address = split_address(peer)
    aead = ChaCha20Poly1305(key)
    counter = int.from_bytes(os.urandom(4), "little") << 32  # a nonce per packet

    def from_device() -> None:
        nonlocal counter
        for _ in range(BATCH):
            try:
                packet = os.read(fd, 65535)
            except BlockingIOError:
                return
            counter += 1
            nonce = counter.to_bytes(12, "little")
            try:  # noqa: SIM105 (a context manager per packet costs more)
                sock.sendto(nonce + aead.encrypt(nonce, packet, None), peer_address)
            except OSError:
                pass  # the loss UDP allows

    def from_socket() -> None:
        for _ in range(BATCH):
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            try:  # noqa: SIM105
                os.write(fd, aead.decrypt(data[:12], data[12:], None))
            except (InvalidTag, OSError):  # forged or corrupt: dropped
                pass

    loop = uvloop.new_event_loop()
    loop.add_reader(fd, from_device)
    loop.add_reader(sock.fileno(), from_socket)
    print(f"{name} up", flush=True)
    try:
        loop.run_until_complete(asyncio.Event().wait())
    finally:
        os.close(fd)


if __name__ == "__main__":
    name, address, mtu, port, peer, key = sys.argv[1:7]
    with contextlib.suppress(KeyboardInterrupt):
        serve(name, address, int(mtu), int(port), peer, bytes.fromhex(key))
