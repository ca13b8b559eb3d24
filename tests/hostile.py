"""A hostile sender for the namespace tests: floods a tunnel's listen port with
datagrams that are garbage, almost WireGuard, or WireGuard with bad MACs or tags.
Run inside a namespace:

    python -m tests.hostile TARGET_HOST:PORT --public-key B64 [--index N]
        [--count N] [--rate PPS] [--seed S] [--kind NAME ...]
    python -m tests.hostile TARGET_HOST:PORT --public-key B64 --initiations
        --source ADDR [--source ADDR ...] [--seconds S] [--rate PPS]
    python -m tests.hostile TARGET_HOST:PORT --public-key B64 --as-peer PRIVATE_B64
        [--bursts N] [--burst K]

The first form sends `count` datagrams of every kind in KINDS (or of each --kind)
at `rate` per second.
With the target's public key some carry a valid mac1 (what an attacker who knows
the key can do) so they reach the handshake code; with `--index` (a receiver index
the target really uses) transport messages and cookie replies hit a live session
with bad tags. The second form floods valid-mac1 initiations from each source
address and counts the cookie replies that come back. The third sends genuine
initiations with a peer's own private key, in bursts, and counts the responses.
Each prints one JSON line.
"""

import argparse
import contextlib
import json
import random
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable

from aioice import stun

from tunnel.protocol import crypto, keys, messages
from tunnel.protocol.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MARKER_L2,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    RESPONSE_SIZE,
    STUN_HEADER_SIZE,
    STUN_MAGIC_COOKIE,
)
from tunnel.protocol.cookie import CookieGenerator
from tunnel.protocol.noise import Handshake, StaticIdentity
from tunnel.protocol.tai64n import tai64n

SIZES = {
    MESSAGE_INITIATION: INITIATION_SIZE,
    MESSAGE_RESPONSE: RESPONSE_SIZE,
    MESSAGE_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}
BATCH = 200  # datagrams between pacing sleeps
BURST_GAP = 0.1  # seconds from one burst of a peer's initiations to the next


class Forger:
    """Makes each kind of hostile datagram from a seeded RNG."""

    def __init__(self, rng: random.Random, public_key: bytes, live_index: int | None) -> None:
        self.rng = rng
        self.macs = CookieGenerator(public_key)  # never given a cookie: mac2 stays empty
        self.live_index = live_index

    def bytes_(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def index(self, live: bool) -> bytes:
        if live and self.live_index is not None:
            return struct.pack("<I", self.live_index)
        return self.bytes_(4)

    def with_mac1(self, body: bytes) -> bytes:
        """A handshake message whose mac1 is right and mac2 empty: it passes the
        cheap check and costs the target its Curve25519 work (or a cookie reply)."""
        return self.macs.add_macs(body + bytes(32), 0.0)

    # The kinds; each returns one datagram.

    def random_any_length(self) -> bytes:
        # Every length from empty to a jumbo datagram, biased toward short ones.
        n = self.rng.choice((self.rng.randrange(0, 64), self.rng.randrange(0, 1500), 9000))
        return self.bytes_(n)

    def wrong_size(self) -> bytes:
        kind = self.rng.choice((1, 2, 3))
        size = SIZES[kind] + self.rng.choice((-1, 1, -SIZES[kind] + 4, 100))
        return bytes((kind, 0, 0, 0)) + self.bytes_(size - 4)

    def reserved_bytes_set(self) -> bytes:
        kind = self.rng.choice((1, 2, 3, 4))
        size = SIZES.get(kind, 48)
        return bytes((kind, self.rng.randrange(2, 256), 0, 0)) + self.bytes_(size - 4)

    def unknown_type(self) -> bytes:
        return bytes((self.rng.choice((0, 5, 6, 255)), 0, 0, 0)) + self.bytes_(60)

    def bad_mac1(self) -> bytes:
        kind = self.rng.choice((1, 2))
        return bytes((kind, 0, 0, 0)) + self.bytes_(SIZES[kind] - 4)

    def initiation_valid_mac1(self) -> bytes:
        return self.with_mac1(bytes((1, 0, 0, 0)) + self.bytes_(INITIATION_SIZE - 36))

    def response_valid_mac1(self) -> bytes:
        body = bytes((2, 0, 0, 0)) + self.bytes_(4) + self.index(self.rng.random() < 0.5)
        return self.with_mac1(body + self.bytes_(RESPONSE_SIZE - 12 - 32))

    def cookie_reply(self) -> bytes:
        live = self.rng.random() < 0.5
        return bytes((3, 0, 0, 0)) + self.index(live) + self.bytes_(COOKIE_REPLY_SIZE - 8)

    def transport_unknown_index(self) -> bytes:
        return bytes((4, 0, 0, 0)) + self.bytes_(12 + self.rng.randrange(16, 1500))

    def transport_bad_tag(self) -> bytes:
        # A live receiver index with any counter (also far ahead of the real one:
        # if the window moved before the tag was checked, real traffic would die).
        counter = self.rng.choice((self.rng.randrange(0, 1 << 16), self.rng.getrandbits(64)))
        return (
            bytes((4, 0, 0, 0))
            + self.index(True)
            + struct.pack("<Q", counter)
            + self.bytes_(self.rng.randrange(16, 1500))
        )

    def transport_short(self) -> bytes:
        return bytes((4, 0, 0, 0)) + self.bytes_(self.rng.randrange(0, 28))

    def transport_other_mode(self) -> bytes:
        return bytes((4, MARKER_L2, 0, 0)) + self.index(True) + self.bytes_(8 + 48)

    def stun_lookalike(self) -> bytes:
        """STUN's header (RFC 5389: the cookie, a length that fits) over random
        attributes: a fleet host's STUN client parses these."""
        body = self.bytes_(4 * self.rng.randrange(1, 64))
        kind = self.rng.randrange(0, 0x4000)
        header = struct.pack("!HHI", kind, len(body), STUN_MAGIC_COOKIE)
        return header + self.bytes_(STUN_HEADER_SIZE - 8) + body

    def stun_binding_response(self) -> bytes:
        """A well-formed Binding answer to no request, naming any address."""
        answer = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, self.bytes_(12))
        answer.attributes["XOR-MAPPED-ADDRESS"] = (f"198.51.100.{self.rng.randrange(256)}", 9)
        return bytes(answer)


KINDS: dict[str, Callable[[Forger], bytes]] = {
    name: getattr(Forger, name)
    for name in (
        "random_any_length",
        "wrong_size",
        "reserved_bytes_set",
        "unknown_type",
        "bad_mac1",
        "initiation_valid_mac1",
        "response_valid_mac1",
        "cookie_reply",
        "transport_unknown_index",
        "transport_bad_tag",
        "transport_short",
        "transport_other_mode",
        "stun_lookalike",
        "stun_binding_response",
    )
}


def pace(started: float, sent: int, rate: float) -> None:
    ahead = sent / rate - (time.monotonic() - started)
    if ahead > 0:
        time.sleep(ahead)


def flood_mixed(
    target: tuple[str, int], forger: Forger, count: int, rate: float, kinds: list[str]
) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sent: Counter[str] = Counter()
    names = kinds or list(KINDS)
    started = time.monotonic()
    for i in range(count):
        name = names[i % len(names)]
        try:
            sock.sendto(KINDS[name](forger), target)
            sent[name] += 1
        except (BlockingIOError, OSError):
            sent["send_failed"] += 1  # our own buffer full, or ICMP errors coming back
        if i % BATCH == BATCH - 1:
            pace(started, i + 1, rate)
    return {"sent": dict(sent), "seconds": round(time.monotonic() - started, 2)}


def flood_initiations(
    target: tuple[str, int], forger: Forger, sources: list[str], seconds: float, rate: float
) -> dict:
    """Valid-mac1 initiations at `rate` per source. Each source takes the cookies the
    target hands out, as a sender at a real address can, so once the target is
    under load its initiations carry a valid mac2 too. Counts the cookie replies
    back and the initiations sent with a cookie."""
    socks, cookies = [], []
    for address in sources:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 0))
        sock.setblocking(False)
        socks.append(sock)
        cookies.append(CookieGenerator(forger.macs.remote_public_key))
    sent: Counter[str] = Counter()
    with_cookie: Counter[str] = Counter()
    replies: Counter[str] = Counter()
    started = time.monotonic()
    n = 0
    # A cookie reply opens with the mac1 of the initiation it answers, which it
    # names by that initiation's sender index: each source's recent ones.
    mac1s: list[dict[int, bytes]] = [{} for _ in sources]
    while (now := time.monotonic()) - started < seconds:
        for i, (sock, address, cookie) in enumerate(zip(socks, sources, cookies, strict=True)):
            body = bytes((1, 0, 0, 0)) + forger.bytes_(INITIATION_SIZE - 4)
            initiation = cookie.add_macs(body, now)
            if len(mac1s[i]) > 4096:
                mac1s[i].clear()
            mac1s[i][struct.unpack_from("<I", initiation, 4)[0]] = cookie.last_mac1
            try:
                sock.sendto(initiation, target)
                sent[address] += 1
                with_cookie[address] += bool(cookie.cookie)
            except OSError:
                pass
        n += 1
        for sock in select.select(socks, [], [], 0)[0]:
            i = socks.index(sock)
            _drain(sock, replies, sources[i], cookies[i], mac1s[i], now)
        pace(started, n, rate)
    # Replies to the last initiations are still on their way.
    deadline = time.monotonic() + 0.5
    while (left := deadline - time.monotonic()) > 0:
        for sock in select.select(socks, [], [], left)[0]:
            i = socks.index(sock)
            _drain(sock, replies, sources[i], cookies[i], mac1s[i], time.monotonic())
    return {
        "sent": dict(sent),
        "with_cookie": dict(with_cookie),
        "cookie_replies": dict(replies),
        "seconds": round(time.monotonic() - started, 2),
    }


def _drain(
    sock: socket.socket,
    replies: Counter[str],
    address: str,
    cookie: CookieGenerator,
    mac1s: dict[int, bytes],
    now: float,
) -> None:
    while True:
        try:
            data = sock.recv(2048)
        except (BlockingIOError, OSError):
            return
        if len(data) == COOKIE_REPLY_SIZE and data[0] == MESSAGE_COOKIE_REPLY:
            replies[address] += 1
            reply = messages.parse(data)
            cookie.last_mac1 = mac1s.get(reply.receiver, b"")
            with contextlib.suppress(crypto.DecryptError):
                cookie.consume_reply(reply, now)


def flood_as_peer(
    target: tuple[str, int], responder: bytes, private_key: bytes, bursts: int, burst: int
) -> dict:
    """Initiations that are a peer's own, `burst` of them back to back every
    BURST_GAP seconds: within a burst far faster than the responder's per-peer
    limit, over a second slower than its load threshold. Each is newer than the
    last but older than now, so the real peer's next one is newer still."""
    handshake = Handshake(StaticIdentity(private_key), responder)
    macs = CookieGenerator(responder)
    oldest = time.time() - 60 - bursts * burst
    initiations = [
        macs.add_macs(
            handshake.create_initiation(
                i + 1, keys.generate_private_key(), tai64n(oldest + i)
            ).pack(),
            0.0,
        )
        for i in range(bursts * burst)
    ]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    responses = 0
    started = time.monotonic()
    for b in range(bursts):
        for initiation in initiations[b * burst : (b + 1) * burst]:
            sock.sendto(initiation, target)
        responses += _responses(sock, started + (b + 1) * BURST_GAP)
    responses += _responses(sock, time.monotonic() + 0.5)  # the last still on their way
    return {"sent": len(initiations), "responses": responses}


def _responses(sock: socket.socket, until: float) -> int:
    """Handshake responses read until `until` (the peer's own retries are not)."""
    count = 0
    while (left := until - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            data = sock.recv(2048)
            count += len(data) == RESPONSE_SIZE and data[0] == MESSAGE_RESPONSE
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--index", type=int)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=25_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kind", action="append", default=[], choices=list(KINDS))
    parser.add_argument("--initiations", action="store_true")
    parser.add_argument("--source", action="append", default=[])
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--as-peer", metavar="PRIVATE_KEY")
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--burst", type=int, default=4)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    forger = Forger(random.Random(args.seed), keys.decode(args.public_key), args.index)
    if args.as_peer:
        result = flood_as_peer(
            target, keys.decode(args.public_key), keys.decode(args.as_peer), args.bursts, args.burst
        )
    elif args.initiations:
        result = flood_initiations(target, forger, args.source, args.seconds, args.rate)
    else:
        result = flood_mixed(target, forger, args.count, args.rate, args.kind)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
