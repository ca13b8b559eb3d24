"""A TURN relay (tunnel/fleet/relay.py) for a tunnel in a namespace, run inside it:

    python -m tests.fleet.turn_relay SERVER_HOST:PORT --user USER --password PASS
        --wireguard-port N --peer HOST:PORT [--peer HOST:PORT ...]

Makes the allocation and a local port for each peer, prints one JSON line,
{"relayed": [HOST, PORT], "ports": [[HOST, PORT], ...]} (a port per --peer, in
order) or {"error": WHY}, then relays until SIGTERM and gives the allocation up.
"""

import argparse
import asyncio
import json
import signal
import sys

import uvloop

from tunnel.fleet.relay import RelayError, TurnRelay
from tunnel.host.udp import split_address


async def relay(args: argparse.Namespace) -> int:
    try:
        r = await TurnRelay.allocate(
            split_address(args.server), args.user, args.password, args.wireguard_port
        )
    except RelayError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    ports = [await r.port_for(split_address(peer)) for peer in args.peer]
    print(json.dumps({"relayed": list(r.relayed_address), "ports": ports}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    r.close()
    await asyncio.sleep(0.5)  # time to give the allocation up on the server
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--wireguard-port", type=int, required=True)
    parser.add_argument("--peer", action="append", default=[])
    sys.exit(uvloop.run(relay(parser.parse_args())))


if __name__ == "__main__":
    main()
