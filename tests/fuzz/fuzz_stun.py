"""atheris: STUN on the WireGuard socket. is_stun() takes any bytes, and what
it lets through reaches the STUN client (tunnel/fleet/stun.py) with a request
in flight, which must take any of it without raising, whatever the attributes."""

import asyncio
import sys

import atheris

with atheris.instrument_imports():
    from aioice import stun

    from tunnel.fleet.stun import StunClient
    from tunnel.protocol.stun import is_stun

SERVER = ("192.0.2.7", 3478)
# The transaction ID of the request in flight, which the seeds' answers name.
TRANSACTION_ID = bytes(range(12))
stun.random_transaction_id = lambda: TRANSACTION_ID
LOOP = asyncio.new_event_loop()
CLIENT = StunClient(lambda data, to: None)
# A request in flight (the loop never runs again, so it never times out), so
# that an answer naming it gets as far as aioice's transaction.


async def request_in_flight() -> asyncio.Task:
    task = asyncio.ensure_future(CLIENT.mapped_address(SERVER, retransmissions=0))
    await asyncio.sleep(0)  # sent: the transaction is open
    return task


PENDING = LOOP.run_until_complete(request_in_flight())


def one_input(data: bytes) -> None:
    if is_stun(data):
        CLIENT.received(data, SERVER)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
