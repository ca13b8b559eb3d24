"""Records handshake and transport vectors from wireguard-go (Debian's package),
the WireGuard implementation our tun mode must match bit for bit.

Run as root from the repo root: .venv/bin/python tests/vectors/record_wireguard_go.py
It writes tests/vectors/wireguard_go.json, which tests/protocol/test_vectors.py replays offline.

Two exchanges with fixed static keys, preshared key and our ephemeral keys:
- we initiate: our initiation, wireguard-go's response, then an ICMP echo request
  we send and the echo reply wireguard-go's kernel side sends back, encrypted;
- wireguard-go initiates (to deliver a ping): its initiation, our response, and
  the transport message carrying its echo request.
"""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from tunnel.lab.testbed import Testbed, WgPeer, start_wireguard_go
from tunnel.protocol import keys
from tunnel.protocol.cookie import CookieGenerator
from tunnel.protocol.keypair import Keypair
from tunnel.protocol.messages import Response, Transport, parse
from tunnel.protocol.noise import Handshake, StaticIdentity, accept_initiation, consume_initiation
from tunnel.protocol.tai64n import tai64n

OURS = bytes(range(32))
THEIRS = bytes(range(32, 64))
PSK = bytes(range(64, 96))
EPHEMERAL_INITIATOR = bytes(range(96, 128))
EPHEMERAL_RESPONDER = bytes(range(128, 160))
OUT = Path(__file__).with_name("wireguard_go.json")


def icmp_echo(src: str, dst: str, ident: int) -> bytes:
    payload = b"pyvpn-vector"
    icmp = bytearray(b"\x08\x00\x00\x00" + ident.to_bytes(2, "big") + b"\x00\x01" + payload)
    icmp[2:4] = checksum(icmp).to_bytes(2, "big")
    header = bytearray(
        b"\x45\x00"
        + (20 + len(icmp)).to_bytes(2, "big")
        + b"\x00\x01\x00\x00\x40\x01\x00\x00"
        + socket.inet_aton(src)
        + socket.inet_aton(dst)
    )
    header[10:12] = checksum(header).to_bytes(2, "big")
    return bytes(header + icmp)


def checksum(data: bytes) -> int:
    total = sum(
        int.from_bytes(data[i : i + 2].ljust(2, b"\0"), "big") for i in range(0, len(data), 2)
    )
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def inside() -> None:
    """Runs in namespace A: our side of both exchanges."""
    me = StaticIdentity(OURS)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("198.18.0.1", 51821))
    sock.settimeout(10)
    wg = ("198.18.0.2", 51820)
    record = {}

    # 1. We initiate.
    hs = Handshake(me, keys.public_key(THEIRS), PSK)
    timestamp = tai64n(time.time())
    initiation = hs.create_initiation(0x11223344, EPHEMERAL_INITIATOR, timestamp)
    data = CookieGenerator(keys.public_key(THEIRS)).add_macs(initiation.pack(), 0.0)
    sock.sendto(data, wg)
    response, _ = sock.recvfrom(2048)
    msg = parse(response)
    assert isinstance(msg, Response)
    hs.consume_response(msg)
    keypair = Keypair(hs.derive_session(), 0.0)
    request = icmp_echo("10.99.0.1", "10.99.0.2", 0x5151)
    sent = keypair.encrypt(request + bytes(-len(request) % 16), 0.0)
    sock.sendto(sent, wg)
    while True:
        reply, _ = sock.recvfrom(2048)
        if len(reply) > 32:  # skip keepalives
            break
    record["we_initiate"] = {
        "timestamp": timestamp.hex(),
        "initiation": data.hex(),
        "response": response.hex(),
        "transport_sent": sent.hex(),
        "plaintext_sent": request.hex(),
        "transport_received": reply.hex(),
    }

    # 2. wireguard-go initiates: the test harness pings us from its side.
    print("ready", flush=True)
    hs2 = Handshake(me, keys.public_key(THEIRS), PSK)
    while True:
        initiation2, source = sock.recvfrom(2048)
        if initiation2[0] == 1:
            break
    consumed = consume_initiation(me, parse(initiation2))
    accept_initiation(hs2, consumed)
    response2 = hs2.create_response(0x55667788, EPHEMERAL_RESPONDER)
    response2_data = CookieGenerator(keys.public_key(THEIRS)).add_macs(response2.pack(), 0.0)
    sock.sendto(response2_data, source)
    while True:
        transport, _ = sock.recvfrom(2048)
        if transport[0] == 4 and len(transport) > 32:
            break
    keypair2 = Keypair(hs2.derive_session(), 0.0)
    record["they_initiate"] = {
        "initiation": initiation2.hex(),
        "timestamp": consumed.timestamp.hex(),
        "response": response2_data.hex(),
        "transport_received": transport.hex(),
        "plaintext_received": keypair2.decrypt(parse(transport), 0.0).hex(),
    }
    assert isinstance(parse(transport), Transport)
    print(json.dumps(record), flush=True)


def main() -> None:
    with Testbed(tag="vec") as bed:
        wg = start_wireguard_go(
            bed.b,
            "wgvec",
            THEIRS,
            51820,
            [
                WgPeer(
                    keys.public_key(OURS), ["10.99.0.1/32"], "198.18.0.1:51821", preshared_key=PSK
                )
            ],
            ["10.99.0.2/24"],
        )
        with wg:
            ours = bed.a.popen(
                sys.executable, __file__, "--inside", stdout=subprocess.PIPE, text=True
            )
            assert ours.stdout is not None
            assert ours.stdout.readline().strip() == "ready"
            # A new handshake from wireguard-go's side: drop its session by re-adding the peer.
            bed.b.run("wg", "set", "wgvec", "peer", keys.encode(keys.public_key(OURS)), "remove")
            psk_file = Path("/tmp/pyvpn-vector-psk")
            psk_file.write_text(keys.encode(PSK))
            bed.b.run(
                "wg",
                "set",
                "wgvec",
                "peer",
                keys.encode(keys.public_key(OURS)),
                "preshared-key",
                str(psk_file),
                "endpoint",
                "198.18.0.1:51821",
                "allowed-ips",
                "10.99.0.1/32",
            )
            psk_file.unlink()
            bed.b.run("ip", "route", "replace", "10.99.0.1/32", "dev", "wgvec")
            bed.b.popen("ping", "-c", "3", "-i", "0.5", "10.99.0.1")
            record = json.loads(ours.stdout.readline())
            ours.wait(10)
    record["source"] = (
        "recorded from wireguard-go "
        + subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "wireguard-go"], capture_output=True, text=True
        ).stdout
        + " (Debian) by tests/vectors/record_wireguard_go.py"
    )
    record["keys"] = {
        "ours": OURS.hex(),
        "theirs": THEIRS.hex(),
        "psk": PSK.hex(),
        "ephemeral_initiator": EPHEMERAL_INITIATOR.hex(),
        "ephemeral_responder": EPHEMERAL_RESPONDER.hex(),
    }
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    inside() if "--inside" in sys.argv else main()
