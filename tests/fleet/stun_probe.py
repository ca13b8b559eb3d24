"""Ask a STUN server for a UDP port's public address, from inside a namespace:

    python -m tests.fleet.stun_probe SERVER_HOST:PORT --plane python|native|socket
        [--port N] [--device NAME] [--retransmissions N] [--count N]

With --plane python or native the request goes out of a WireGuard socket that a
data plane runs, as a fleet host's does: a tun device, a socket on --port and
the plane as `pyvpn up` builds them, the answer coming back through the plane's
receive path (and on the native plane, through C). With --plane socket it goes
out of a bare socket on --port, which closes after: how a test learns a cone
NAT's mapping of a port before a tunnel binds it. With --count it asks that
many times, a quarter of a second apart, from one socket. Prints one JSON line,
{"mapped": [HOST, PORT], "answers": N} or {"error": WHY, "answers": N}: the
last answer, and how many came before the first failure.
"""

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator

import uvloop

from tunnel.core.interface import Interface
from tunnel.fleet.stun import StunClient, StunError
from tunnel.host import clock, udp
from tunnel.host.device import open_device
from tunnel.planes import dp
from tunnel.planes.base import Plane
from tunnel.planes.native import NativeShell
from tunnel.planes.python import PythonPlane
from tunnel.protocol import keys
from tunnel.protocol.address import Address

INTERVAL = 0.25  # seconds between one answer and the next request, with --count


@contextlib.contextmanager
def plane(kind: str, device: str, port: int) -> Iterator[Plane]:
    native = kind == "native"
    dev_fd = open_device(device, False, dp.device_open_flags() if native else 0)
    sock = udp.open_socket(port)
    iface = Interface(
        keys.generate_private_key(),
        wall_offset=time.time() - clock.now(),
        external_transport=native,
    )
    try:
        yield NativeShell(iface, dev_fd, sock) if native else PythonPlane(iface, dev_fd, sock)
    finally:
        sock.close()
        os.close(dev_fd)


async def ask(client: StunClient, server: Address, retransmissions: int, count: int) -> dict:
    answers, mapped = 0, None
    try:
        for _ in range(count):
            mapped = await client.mapped_address(server, retransmissions)
            answers += 1
            await asyncio.sleep(INTERVAL if answers < count else 0)
    except StunError as e:
        return {"error": str(e), "answers": answers}
    return {"mapped": mapped, "answers": answers}


async def through_plane(
    kind: str, device: str, port: int, server: Address, retransmissions: int, count: int
) -> dict:
    with plane(kind, device, port) as p:
        client = StunClient(p.send_datagram)
        p.stun_listener = client.received
        p.start(asyncio.get_running_loop())
        try:
            return await ask(client, server, retransmissions, count)
        finally:
            p.stop()


async def through_socket(port: int, server: Address, retransmissions: int, count: int) -> dict:
    loop = asyncio.get_running_loop()
    with udp.open_socket(port) as sock:
        client = StunClient(lambda data, to: udp.send_all(sock, to, [data]))

        def readable() -> None:
            with contextlib.suppress(BlockingIOError):
                data, source = sock.recvfrom(65535)
                client.received(data, udp.from_sockaddr(source))

        loop.add_reader(sock.fileno(), readable)
        try:
            return await ask(client, server, retransmissions, count)
        finally:
            loop.remove_reader(sock.fileno())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server")
    parser.add_argument("--plane", choices=("python", "native", "socket"), required=True)
    parser.add_argument("--port", type=int, default=51820)
    parser.add_argument("--device", default=f"pvstun{os.getpid()}")
    parser.add_argument("--retransmissions", type=int, default=4)
    parser.add_argument("--count", type=int, default=1)
    args = parser.parse_args()
    server = udp.split_address(args.server)
    asking = (server, args.retransmissions, args.count)
    if args.plane == "socket":
        probe = through_socket(args.port, *asking)
    else:
        probe = through_plane(args.plane, args.device, args.port, *asking)
    print(json.dumps(uvloop.run(probe)))


if __name__ == "__main__":
    main()
