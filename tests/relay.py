"""A userspace UDP impairment relay between two tunnel peers (the kernel here has
no netem): it forwards datagrams both ways and can delay, duplicate, reorder or
replay them. Run inside a namespace:

    python -m tests.relay LISTEN_HOST:PORT TARGET_HOST:PORT [--replay-ms N]
        [--duplicate P] [--reorder P] [--delay-ms N] [--seed S]

The peer whose endpoint is LISTEN talks to TARGET through it; TARGET's replies go
back to whoever sent last. Prints "ready" once bound; stops on SIGTERM.
"""

import argparse
import asyncio
import random
import signal


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

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        addr = addr[:2]
        if addr == self.target:
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
        loop.call_later(delay, self.transport.sendto, data, destination)
        while self.held:
            loop.call_later(delay, self.transport.sendto, *self.held.pop())
        if a.duplicate and self.rng.random() < a.duplicate:
            loop.call_later(delay, self.transport.sendto, data, destination)
        if a.replay_ms:
            loop.call_later(a.replay_ms / 1000, self.transport.sendto, data, destination)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("listen")
    parser.add_argument("target")
    parser.add_argument("--replay-ms", type=float, default=0)
    parser.add_argument("--duplicate", type=float, default=0)
    parser.add_argument("--reorder", type=float, default=0)
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(
        lambda: Relay(parse_address(args.target), args), local_addr=parse_address(args.listen)
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
