"""STUN on the WireGuard socket: telling its messages from WireGuard's, the
Binding client (tunnel/fleet/stun.py), and the Python plane handing STUN to it.
The same through NATs and on the native plane: tests/test_nat.py."""

import asyncio
import os
import random
import socket
import time

import pytest
from aioice import stun

from tunnel.core.interface import Interface
from tunnel.fleet.stun import StunClient, StunError
from tunnel.host import clock, udp
from tunnel.planes.python import PythonPlane
from tunnel.protocol import keys
from tunnel.protocol.address import Address
from tunnel.protocol.constants import INITIATION_SIZE, STUN_MAGIC_COOKIE
from tunnel.protocol.stun import is_stun

from ..hostile import KINDS, Forger

SERVER: Address = ("192.0.2.7", 3478)
MAPPED: Address = ("203.0.113.11", 40000)


def binding_answer(request: bytes, mapped: Address = MAPPED) -> bytes:
    """What a STUN server answers to a Binding request."""
    asked = stun.parse_message(request)
    answer = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, asked.transaction_id)
    answer.attributes["XOR-MAPPED-ADDRESS"] = mapped
    return bytes(answer)


def test_stun_messages_are_told_from_every_wireguard_message() -> None:
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.attributes["SOFTWARE"] = "pyvpn"
    assert is_stun(bytes(request))
    assert is_stun(binding_answer(bytes(request)))
    forger = Forger(random.Random(5), keys.generate_private_key(), 7)
    for name, make in KINDS.items():
        if not name.startswith("stun"):
            for _ in range(50):
                assert not is_stun(make(forger)), name
    # A WireGuard initiation whose random sender index is the magic cookie.
    initiation = bytes((1, 0, 0, 0)) + STUN_MAGIC_COOKIE.to_bytes(4, "big")
    assert not is_stun(initiation + bytes(INITIATION_SIZE - 8))
    # A STUN header whose length does not match the datagram is not STUN.
    assert not is_stun(bytes(request)[:-4])


async def ask(client: StunClient, server: Address = SERVER, retransmissions: int = 4) -> Address:
    return await client.mapped_address(server, retransmissions)


def test_the_client_returns_the_mapped_address_the_server_reports() -> None:
    async def run() -> Address:
        loop = asyncio.get_running_loop()
        client = StunClient(
            lambda data, to: loop.call_soon(client.received, binding_answer(data), to)
        )
        return await ask(client)

    assert asyncio.run(run()) == MAPPED


def test_two_clients_ask_each_other_as_fleet_peers_do() -> None:
    """A fleet peer's agent answers a Binding request on its WireGuard socket
    with the address it came from: asked at a direct candidate, it answers
    (agent.probe_direct), and the request is STUN to the peer's plane."""
    here: Address = ("198.51.100.1", 51820)
    there: Address = ("198.51.100.2", 51820)
    requests: list[bytes] = []

    async def run() -> Address:
        loop = asyncio.get_running_loop()

        def to_peer(data: bytes, to: Address) -> None:
            assert to == there
            requests.append(data)
            loop.call_soon(peer.received, data, here)

        client = StunClient(to_peer)
        peer = StunClient(lambda data, to: loop.call_soon(client.received, data, there))
        return await ask(client, there)

    assert asyncio.run(run()) == here
    assert all(is_stun(request) for request in requests)


def test_the_client_retransmits_until_an_answer_comes() -> None:
    sent: list[float] = []

    async def run() -> Address:
        loop = asyncio.get_running_loop()

        def send(data: bytes, to: Address) -> None:
            sent.append(loop.time())
            if len(sent) == 3:  # the first two requests are lost
                loop.call_soon(client.received, binding_answer(data), to)

        client = StunClient(send)
        return await ask(client)

    assert asyncio.run(run()) == MAPPED
    assert len(sent) == 3
    assert sent[2] - sent[1] > sent[1] - sent[0]  # RFC 5389: each wait twice the last


def test_no_answer_is_a_clear_failure_after_the_last_retransmission() -> None:
    sent: list[bytes] = []

    async def run() -> Address:
        return await ask(StunClient(lambda data, to: sent.append(data)), retransmissions=1)

    with pytest.raises(StunError, match=r"no answer from STUN server 192\.0\.2\.7:3478"):
        asyncio.run(run())
    assert len(sent) == 2


def test_answers_from_elsewhere_and_hostile_bytes_are_ignored() -> None:
    forger = Forger(random.Random(9), keys.generate_private_key(), None)

    async def run() -> Address:
        loop = asyncio.get_running_loop()

        def send(data: bytes, to: Address) -> None:
            # A forged answer from another address, and garbage, before the real one.
            loop.call_soon(client.received, binding_answer(data, ("6.6.6.6", 6)), ("6.6.6.6", 1))
            for make in (KINDS["stun_lookalike"], KINDS["stun_binding_response"]):
                for _ in range(20):
                    loop.call_soon(client.received, make(forger), to)
            loop.call_soon(client.received, binding_answer(data), to)

        client = StunClient(send)
        return await ask(client)

    assert asyncio.run(run()) == MAPPED


def test_an_error_answer_is_a_clear_failure() -> None:
    async def run() -> Address:
        loop = asyncio.get_running_loop()

        def send(data: bytes, to: Address) -> None:
            asked = stun.parse_message(data)
            error = stun.Message(stun.Method.BINDING, stun.Class.ERROR, asked.transaction_id)
            error.attributes["ERROR-CODE"] = (400, "Bad Request")
            loop.call_soon(client.received, bytes(error), to)

        client = StunClient(send)
        return await ask(client)

    with pytest.raises(StunError, match=r"refused.*400"):
        asyncio.run(run())


def test_the_python_plane_hands_stun_answers_to_its_listener() -> None:
    """A STUN server on loopback answers a request sent out of the plane's socket;
    the answer reaches the client through the plane's receive path, past hostile
    look-alikes."""
    forger = Forger(random.Random(3), keys.generate_private_key(), None)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    read_end, write_end = os.pipe()  # the device: never readable here
    sock = udp.open_socket(0)
    iface = Interface(keys.generate_private_key(), wall_offset=time.time() - clock.now())
    plane = PythonPlane(iface, read_end, sock)
    port = sock.getsockname()[1]

    async def run() -> Address:
        loop = asyncio.get_running_loop()

        def answer() -> None:
            request, source = server.recvfrom(2048)
            # Hostile STUN look-alikes first, from the server's own address.
            for make in (KINDS["stun_lookalike"], KINDS["stun_binding_response"]):
                for _ in range(50):
                    server.sendto(make(forger), source)
            server.sendto(binding_answer(request, udp.from_sockaddr(source)), source)

        loop.add_reader(server.fileno(), answer)
        client = StunClient(plane.send_datagram)
        plane.stun_listener = client.received
        plane.start(loop)
        try:
            return await ask(client, ("127.0.0.1", server.getsockname()[1]))
        finally:
            plane.stop()
            loop.remove_reader(server.fileno())

    try:
        mapped = asyncio.run(run())
    finally:
        for closing in (server, sock):
            closing.close()
        os.close(read_end)
        os.close(write_end)
    assert mapped == ("127.0.0.1", port)
