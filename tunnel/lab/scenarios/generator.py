"""Deterministic traffic for the scenarios, run inside a namespace as
`python -m tunnel.lab.scenarios.generator MODE ...`; each mode prints one JSON
line of what it sent or received.

    chatter DEV SIDE HOSTS SECONDS SUBNET4 SUBNET6 ROUNDS_PER_S
        every host's chatter (frames.host_chatter) ROUNDS_PER_S times a second,
        all the hosts' frames evenly spaced
    frames DEV DST_MAC SIZE RATE SECONDS [SRC_MAC]
        SIZE-byte Ethernet frames of the local experimental ethertype to DST_MAC
    udp DST PORT SIZE RATE SECONDS
        SIZE-byte UDP payloads to DST:PORT (broadcast allowed)
    receive ADDR PORT SECONDS
        count the UDP datagrams arriving on ADDR:PORT, the first within 10 s,
        until SECONDS pass without one
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..measure import MeasurementError
from ..testbed import Namespace, pyvpn_env, stop_process
from .frames import ethernet, host_chatter

ETHERTYPE_EXPERIMENTAL = 0x88B5  # IEEE 802 local experimental
TICK = 0.01  # send what is due every 10 ms: steady enough, and cheap
FIRST_WAIT = 10.0  # a receiver's wait for the sender to start


def paced(items: list[bytes], rate: float, seconds: float) -> Iterator[bytes]:
    """`items` over and over, `rate` a second on average, for `seconds`."""
    start, sent = time.monotonic(), 0
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate) + 1
        while sent < due:
            yield items[sent % len(items)]
            sent += 1
        time.sleep(TICK)


def send_all(send: Callable[[bytes], object], frames: Iterator[bytes]) -> dict[str, int]:
    """Counts what the kernel took: a send that failed sent nothing."""
    count = size = failed = 0
    for frame in frames:
        try:
            send(frame)
        except OSError:  # EMSGSIZE after a "too big"; ENOBUFS on a full queue
            failed += 1
            continue
        count, size = count + 1, size + len(frame)
    return {"sent": count, "bytes": size, "send_errors": failed}


def packet_socket(dev: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((dev, 0))
    return sock


def chatter(
    dev: str, side: str, hosts: str, seconds: str, subnet4: str, subnet6: str, rounds_per_s: str
) -> dict[str, int]:
    n = int(hosts)
    frames = [f for i in range(n) for f in host_chatter(int(side), i, n, subnet4, subnet6)]
    rate = len(frames) * float(rounds_per_s)
    with packet_socket(dev) as sock:
        return send_all(sock.send, paced(frames, rate, float(seconds)))


def frames(dev: str, dst: str, size: str, rate: str, seconds: str, src: str = "") -> dict[str, int]:
    with packet_socket(dev) as sock:
        source = bytes.fromhex(src.replace(":", "")) if src else sock.getsockname()[4]
        payload = b"pyvpn bench ".ljust(int(size) - 14, b".")
        frame = ethernet(
            bytes.fromhex(dst.replace(":", "")), source, ETHERTYPE_EXPERIMENTAL, payload
        )
        return send_all(sock.send, paced([frame], float(rate), float(seconds)))


def udp(dst: str, port: str, size: str, rate: str, seconds: str) -> dict[str, int]:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        target = (dst, int(port))
        payloads = paced([bytes(int(size))], float(rate), float(seconds))
        return send_all(lambda payload: sock.sendto(payload, target), payloads)


def receive(addr: str, port: str, seconds: str) -> dict[str, int]:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((addr, int(port)))
        print(json.dumps({"listening": True}), flush=True)
        sock.settimeout(FIRST_WAIT)
        count = size = 0
        try:
            while True:
                count, size = count + 1, size + len(sock.recv(65536))
                sock.settimeout(float(seconds))
        except TimeoutError:
            return {"received": count, "bytes": size}


MODES: dict[str, Callable[..., dict[str, int]]] = {
    "chatter": chatter,
    "frames": frames,
    "udp": udp,
    "receive": receive,
}


# ---------------------------------------------------------------------------
# The caller's side


def start(ns: Namespace, mode: str, *args: object) -> subprocess.Popen[str]:
    """This module in `ns`, running `mode` with `args`."""
    argv = [sys.executable, "-m", __name__, mode, *map(str, args)]
    return ns.popen(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=pyvpn_env()
    )


def wait_listening(proc: subprocess.Popen[str]) -> None:
    """Until a `receive` generator has bound its socket."""
    assert proc.stdout is not None
    if "listening" not in proc.stdout.readline():
        stop_process(proc, grace=1)
        raise MeasurementError(
            f"UDP receiver did not start: {proc.stderr.read() if proc.stderr else ''}"
        )


def outcome(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """What a generator printed when it finished."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc, grace=1)
        raise MeasurementError(f"traffic generator still running after {timeout:g} s") from None
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise MeasurementError(f"traffic generator failed: {(err or out).strip()[-300:]}")
    doc: dict[str, Any] = json.loads(lines[-1])
    return doc


def generate(ns: Namespace, mode: str, *args: object, timeout: float = 60) -> dict[str, Any]:
    return outcome(start(ns, mode, *args), timeout)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MODES:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(MODES[argv[0]](*argv[1:])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
