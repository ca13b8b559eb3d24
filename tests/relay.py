"""A userspace UDP impairment relay between two tunnel peers (the kernel here has
no netem): it forwards datagrams both ways and can delay, duplicate, reorder or
replay them, or act as a NAT. Run inside a namespace:

    python -m tests.relay LISTEN_HOST:PORT TARGET_HOST:PORT [--replay-ms N]
        [--duplicate P] [--reorder P] [--delay-ms N] [--seed S]
        [--nat] [--nat-timeout S] [--nonces]

The peer whose endpoint is LISTEN talks to TARGET through it; TARGET's replies go
back to whoever sent last. Prints "ready" once bound; stops on SIGTERM.

With --nonces it reads the receiver index and counter of every transport message
it is given (before any impairment) and, when it stops, prints a JSON line:
{"transport": how many, "reused": how many named an (index, counter) seen before},
a nonce used twice under one key.

With --nat the relay is a port-translating NAT: it talks to TARGET from a mapping
(a socket of its own on a fresh port), prints "mapping PORT" for each new one,
moves to a new port on SIGUSR1 (a NAT rebinding), and with --nat-timeout drops a
mapping that saw nothing from the inside for S seconds, as a home router does;
TARGET's datagrams to a dropped mapping are lost.
"""

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket

SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>: beyond rmem_max, for root


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Relay(asyncio.DatagramProtocol):
    def __init__(self, target: tuple[str, int], args: argparse.Namespace) -> None:
        self.target = target
        self.args = args
        self.client: tuple[str, int] | None = None
        self.rng = random.Random(args.seed)
        self.held: list[tuple[bytes, tuple[str, int]]] = []
        self.mapping: Mapping | None = None  # --nat: the outside socket
        self.nonces: set[bytes] = set()  # --nonces: receiver index and counter of each
        self.transport_messages = self.reused = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if self.args.nonces:
            self.count_nonce(data)
        addr = addr[:2]
        if addr == self.target and not self.args.nat:
            destination = self.client
        else:
            self.client = addr
            destination = self.target
        if destination is None:
            return
        loop = asyncio.get_running_loop()
        a = self.args
        if a.reorder and self.rng.random() < a.reorder:
            self.held.append((data, destination))  # overtaken by the next datagram
            return
        delay = a.delay_ms / 1000
        loop.call_later(delay, self.send, data, destination)
        while self.held:
            loop.call_later(delay, self.send, *self.held.pop())
        if a.duplicate and self.rng.random() < a.duplicate:
            loop.call_later(delay, self.send, data, destination)
        if a.replay_ms:
            loop.call_later(a.replay_ms / 1000, self.send, data, destination)

    def count_nonce(self, data: bytes) -> None:
        if len(data) < 32 or data[0] != 4:  # a transport message: type 4, header and tag
            return
        self.transport_messages += 1
        nonce = data[4:16]  # receiver index (one per key), counter
        self.reused += nonce in self.nonces
        self.nonces.add(nonce)

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        if destination != self.target or not self.args.nat:
            self.transport.sendto(data, destination)
            return
        if self.mapping is None or self.mapping.closed:
            self.mapping = Mapping(self)
        self.mapping.send(data)

    def rebind(self) -> None:
        if self.mapping is not None:
            self.mapping.close()


class Mapping:
    """One NAT mapping: the inside client seen from outside as this socket's port."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.closed = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((relay.args.nat_address, 0))
        self.sock.setblocking(False)
        print("mapping", self.sock.getsockname()[1], flush=True)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self.readable)
        self.last_out = self.loop.time()
        if relay.args.nat_timeout:
            self.loop.call_later(relay.args.nat_timeout, self.expire)

    def send(self, data: bytes) -> None:
        self.last_out = self.loop.time()
        # An OSError is an ICMP error from an earlier send: lost, as on a real link.
        with contextlib.suppress(OSError):
            self.sock.sendto(data, self.relay.target)

    def readable(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            if addr[:2] == self.relay.target and self.relay.client is not None:
                self.relay.transport.sendto(data, self.relay.client)

    def expire(self) -> None:
        if self.closed:
            return
        idle = self.loop.time() - self.last_out
        if idle >= self.relay.args.nat_timeout:
            print("expired", self.sock.getsockname()[1], flush=True)
            self.close()
        else:
            self.loop.call_later(self.relay.args.nat_timeout - idle, self.expire)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("listen")
    parser.add_argument("target")
    parser.add_argument("--replay-ms", type=float, default=0)
    parser.add_argument("--duplicate", type=float, default=0)
    parser.add_argument("--reorder", type=float, default=0)
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nat", action="store_true")
    parser.add_argument("--nat-timeout", type=float, default=0)
    parser.add_argument("--nonces", action="store_true")
    args = parser.parse_args()
    args.nat_address = parse_address(args.listen)[0]
    loop = asyncio.get_running_loop()
    transport, relay = await loop.create_datagram_endpoint(
        lambda: Relay(parse_address(args.target), args), local_addr=parse_address(args.listen)
    )
    if args.nonces:  # room for a flood, to count its nonces rather than drop them
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, relay.rebind)
    print("ready", flush=True)
    await stop.wait()
    if args.nonces:
        counts = {"transport": relay.transport_messages, "reused": relay.reused}
        print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
