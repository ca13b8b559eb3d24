"""Handshake capacity: how many initiations per second a responder answers with
valid responses. Many distinct initiators, built with the sans-IO protocol
(protocol/noise.py, protocol/cookie.py), not processes: their initiations are
made before the clock starts, sent over UDP from one process from many source
addresses (127.0.0.0/8 is all local, so any 127.x.y.z can be bound), a window of
them in flight; each answer is checked afterwards as the initiator would check it.

A cookie reply (the responder is under load, whitepaper 5.4.7) is answered as a
real initiator answers it: the cookie is kept for its source and the same
initiation goes again with mac2, and so do the initiator's next ones.

Run inside the responder's namespace: `python -m tunnel.lab.handshakes` with
the arguments below; it prints one JSON object (see Result)."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import resource
import selectors
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass

from tunnel.protocol import crypto, keys, messages
from tunnel.protocol.constants import COOKIE_REPLY_SIZE, INITIATIONS_PER_SECOND, RESPONSE_SIZE
from tunnel.protocol.cookie import CookieGenerator
from tunnel.protocol.noise import Handshake, HandshakeError, StaticIdentity
from tunnel.protocol.tai64n import WHITENER_NS, tai64n

MAC1 = messages.INITIATION_MAC1_OFFSET  # where an initiation's mac1 starts
MAC2 = MAC1 + 16
# No initiator sends twice within the responder's per-peer flood limit
# (INITIATIONS_PER_SECOND; noise.c, wireguard-go's HandshakeInitationRate).
PER_INITIATOR_GAP = 1.5 / INITIATIONS_PER_SECOND
MAX_SOURCES = 2048  # source addresses: each has the responder's per-source share under load
ANSWER_TIMEOUT = 0.5  # seconds before an initiation in flight counts as lost


@dataclass
class Result:
    """What one run measured. `rate` counts valid responses only."""

    initiators: int
    sources: int
    sent: int  # initiations, resends after a cookie reply included
    responses: int
    valid_responses: int
    cookie_replies: int
    lost: int
    seconds: float
    rate: float  # valid responses per second


@dataclass
class Pending:
    initiator: int
    packet: bytes  # the initiation with mac1 and an empty mac2
    state: Handshake  # the initiator's state right after making it, to check the answer
    sent_at: float = 0.0
    resent: bool = False


def source_address(k: int) -> str:
    return f"127.{1 + k // 65536}.{k // 256 % 256}.{k % 256}"


def prepare(private_keys: list[bytes], responder: bytes, count: int) -> list[Pending]:
    """`count` initiations, round robin over the initiators, each newer than the
    initiator's last (the responder refuses an older or equal TAI64N as a replay)."""
    states = [Handshake(StaticIdentity(k), responder) for k in private_keys]
    macs = CookieGenerator(responder)
    start = time.time()
    out = []
    for j in range(count):
        i = j % len(states)
        stamp = tai64n(start + (j // len(states)) * WHITENER_NS / 1e9)
        msg = states[i].create_initiation(j + 1, keys.generate_private_key(), stamp)
        out.append(Pending(i, macs.add_macs(msg.pack(), 0.0), copy.copy(states[i])))
    return out


def run(
    target: tuple[str, int],
    private_keys: list[bytes],
    responder: bytes,
    count: int,
    window: int,
    duration: float,
) -> Result:
    pending = prepare(private_keys, responder, count)
    n_sources = min(len(private_keys), MAX_SOURCES)
    _raise_fd_limit(n_sources + 64)
    sockets = []
    selector = selectors.EpollSelector()
    try:
        for k in range(n_sources):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.bind((source_address(k), 0))
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, k)
        return _exchange(target, pending, sockets, selector, window, duration, len(private_keys))
    finally:
        selector.close()
        for sock in sockets:
            sock.close()


def _exchange(
    target: tuple[str, int],
    pending: list[Pending],
    sockets: list[socket.socket],
    selector: selectors.EpollSelector,
    window: int,
    duration: float,
    initiators: int,
) -> Result:
    cookie_key = CookieGenerator(pending[0].state.remote_static).cookie_key
    cookies: dict[int, bytes] = {}  # source -> the cookie it was given
    in_flight: dict[int, Pending] = {}  # sender index -> initiation
    last_sent = [float("-inf")] * initiators
    answers: list[tuple[Pending, bytes]] = []
    sent = cookie_replies = lost = 0
    next_j = 0
    start = time.monotonic()
    last_answer = start

    def send(j: int, p: Pending, now: float) -> None:
        nonlocal sent
        source = p.initiator % len(sockets)
        packet = p.packet
        cookie = cookies.get(source)
        if cookie is not None:
            packet = packet[:MAC2] + crypto.mac(cookie, packet[:MAC2])
        with contextlib.suppress(BlockingIOError):  # lost, then, if never answered
            sockets[source].sendto(packet, target)
        p.sent_at = last_sent[p.initiator] = now
        in_flight[j + 1] = p
        sent += 1

    while True:
        now = time.monotonic()
        sending = now - start < duration
        while sending and next_j < len(pending) and len(in_flight) < window:
            p = pending[next_j]
            if now - last_sent[p.initiator] < PER_INITIATOR_GAP:
                break
            send(next_j, p, now)
            next_j += 1
        if not in_flight and (next_j >= len(pending) or not sending):
            break
        for key, _ in selector.select(0.01):
            sock, source = key.fileobj, key.data
            assert isinstance(sock, socket.socket)
            while True:
                try:
                    data = sock.recv(256)
                except BlockingIOError:
                    break
                if len(data) < 8:
                    continue
                index = struct.unpack_from("<I", data, 8 if data[0] == 2 else 4)[0]
                p = in_flight.get(index)
                if p is None:
                    continue
                if data[0] == 2 and len(data) == RESPONSE_SIZE:
                    del in_flight[index]
                    answers.append((p, data))
                    last_answer = time.monotonic()
                elif data[0] == 3 and len(data) == COOKIE_REPLY_SIZE:
                    cookie_replies += 1
                    reply = messages.parse(data)
                    assert isinstance(reply, messages.CookieReply)
                    try:
                        cookies[source] = crypto.xaead_decrypt(
                            cookie_key, reply.nonce, reply.encrypted_cookie, p.packet[MAC1:MAC2]
                        )
                    except crypto.DecryptError:
                        continue
                    if not p.resent:
                        p.resent = True
                        send(index - 1, p, time.monotonic())
        now = time.monotonic()
        for index in [i for i, p in in_flight.items() if now - p.sent_at > ANSWER_TIMEOUT]:
            del in_flight[index]
            lost += 1
    seconds = max(last_answer - start, 1e-9)
    valid = sum(valid_response(p, data) for p, data in answers)
    return Result(
        initiators,
        len(sockets),
        sent,
        len(answers),
        valid,
        cookie_replies,
        lost,
        round(seconds, 3),
        round(valid / seconds, 1),
    )


def valid_response(p: Pending, data: bytes) -> bool:
    """Whether the initiator would take this response: its mac1 is keyed with the
    initiator's public key, and the Noise message completes the handshake."""
    macs = CookieGenerator(p.state.identity.public_key)
    if crypto.mac(macs.mac1_key, data[: messages.RESPONSE_MAC1_OFFSET]) != data[60:76]:
        return False
    msg = messages.parse(data)
    assert isinstance(msg, messages.Response)
    try:
        copy.copy(p.state).consume_response(msg)
    except HandshakeError:
        return False
    return True


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tunnel.lab.handshakes")
    p.add_argument("--target", required=True, help="HOST:PORT of the responder")
    p.add_argument("--responder", required=True, help="the responder's public key (base64)")
    p.add_argument("--keys", required=True, help="file of initiator private keys, one a line")
    p.add_argument("--count", type=int, default=20000, help="initiations to make")
    p.add_argument("--window", type=int, default=256, help="initiations in flight at most")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of sending at most")
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    with open(args.keys) as fh:
        private_keys = [keys.decode(line) for line in fh if line.strip()]
    result = run(
        (host, int(port)),
        private_keys,
        keys.decode(args.responder),
        args.count,
        args.window,
        args.duration,
    )
    json.dump(asdict(result), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
