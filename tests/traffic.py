"""Real traffic through a tunnel for the namespace tests: a TCP transfer whose
bytes are compared end to end, a flood of numbered UDP datagrams, the impairment
relay (tests/relay.py) between the peers, and raw Ethernet frames sent and
captured."""

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunnel.lab.testbed import Namespace, poll_until

from .waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent

SERVER = textwrap.dedent("""
    import hashlib, socket, sys
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], 5201)); srv.listen(1)
    print("listening", flush=True)
    conn, _ = srv.accept()
    digest, total = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 16):
        digest.update(chunk); total += len(chunk)
    print(total, digest.hexdigest(), flush=True)
""")

CLIENT = textwrap.dedent("""
    import socket, sys, time
    data = open(sys.argv[2], 'rb').read()
    deadline = time.monotonic() + 15
    while True:
        try:
            conn = socket.create_connection((sys.argv[1], 5201), timeout=60); break
        except OSError:
            if time.monotonic() > deadline: raise
            time.sleep(0.2)
    conn.sendall(data); conn.shutdown(socket.SHUT_WR); conn.recv(1); conn.close()
""")


@contextlib.contextmanager
def iperf3_server(ns: Namespace) -> Iterator[subprocess.Popen]:
    """`iperf3 -s -1` (one test, then it exits) in `ns`, yielded once it listens."""
    server = ns.popen("iperf3", "-s", "-1", stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: ns.run("ss", "-Hltn", "sport = :5201").stdout, "iperf3 server", 10)
        yield server
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def tcp_transfer(
    server: Namespace, client: Namespace, address: str, size: int, timeout: float = 120
) -> tuple[str, str]:
    """Send `size` random bytes over TCP to `address`; return (sent, received) sha256."""
    data = os.urandom(size)
    srv = server.popen(sys.executable, "-c", SERVER, address, stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "listening"
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            client.run(sys.executable, "-c", CLIENT, address, f.name, timeout=timeout)
        received = srv.stdout.readline().split()
        srv.wait(timeout=10)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert received and int(received[0]) == size, f"received {received}"
    return hashlib.sha256(data).hexdigest(), received[1]


# Numbered datagrams: the sink prints the numbers it got, in the order it got them,
# once none came for a second.
UDP_SINK = textwrap.dedent("""
    import json, socket, sys
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: hold the flood
    sock.bind((sys.argv[1], 5202))
    print("listening", flush=True)
    got = [int.from_bytes(sock.recv(65535)[:4], "big")]
    sock.settimeout(1.0)
    try:
        while True:
            got.append(int.from_bytes(sock.recv(65535)[:4], "big"))
    except TimeoutError:
        pass
    print(json.dumps(got), flush=True)
""")

# In bursts of 100 that the device's queue (500 packets) holds while the tunnel
# is busy with the one before: a busy machine delays the flood rather than drops it.
UDP_FLOOD = textwrap.dedent("""
    import socket, sys, time
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    filler = bytes(int(sys.argv[3]) - 4)
    for i in range(int(sys.argv[2])):
        sock.sendto(i.to_bytes(4, "big") + filler, (sys.argv[1], 5202))
        if i % 100 == 99:
            time.sleep(0.005)
""")


def udp_flood(
    server: Namespace, client: Namespace, address: str, count: int, size: int = 1200
) -> list[int]:
    """Send `count` datagrams numbered 0, 1, ... to `address`, in bursts; return
    the numbers that arrived, in the order they did."""
    sink = server.popen(sys.executable, "-c", UDP_SINK, address, stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "listening"
        client.run(sys.executable, "-c", UDP_FLOOD, address, str(count), str(size))
        got: list[int] = json.loads(sink.stdout.readline())
        sink.wait(timeout=10)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return got


@contextlib.contextmanager
def relay(ns: Namespace, listen: str, target: str, *options: str) -> Iterator[subprocess.Popen]:
    """tests/relay.py in `ns`; stopped on exit. Its stdout stays readable."""
    proc = ns.popen(
        sys.executable, "-m", "tests.relay", listen, target, *options,
        stdout=subprocess.PIPE, text=True, cwd=str(ROOT),
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


# Raw Ethernet frames through AF_PACKET sockets, for what is not IP: any ethertype,
# any source MAC, group destinations. 0x88B5 is IEEE 802's "local experimental".
ETHERTYPE_EXPERIMENTAL = 0x88B5
ETH_P_ALL = 3  # capture every ethertype
BROADCAST = "ff:ff:ff:ff:ff:ff"

SEND_FRAMES = textwrap.dedent("""
    import socket, sys
    dev, dst, src, ethertype, payload, count = sys.argv[1:]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((dev, 0))
    own = sock.getsockname()[4]
    source = bytes.fromhex(src.replace(":", "")) if src else own
    frame = bytes.fromhex(dst.replace(":", "")) + source + int(ethertype).to_bytes(2, "big")
    for _ in range(int(count)):
        sock.send(frame + bytes.fromhex(payload))
""")

# A frame with a virtio_net_hdr in front (PACKET_VNET_HDR), as a host's TSO would
# hand a TCP super-frame to its bridge.
SEND_OFFLOADED_FRAME = textwrap.dedent("""
    import socket, sys
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
    sock.bind((sys.argv[1], 0))
    sock.send(bytes.fromhex(sys.argv[2]))
""")

# The kernel takes a received frame's VLAN tag off into metadata; PACKET_AUXDATA
# (struct tpacket_auxdata) gives it back, to ETH_P_ALL captures only: without a VLAN
# device the tag is gone before the taps of one ethertype see the frame. Each frame
# is a line as it arrives; once stdin closes, what the kernel queued before is read
# too, and the capture ends.
CAPTURE_FRAMES = textwrap.dedent("""
    import json, select, socket, struct, sys
    dev, ethertype = sys.argv[1], int(sys.argv[2])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    sock.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
    sock.bind((dev, ethertype))
    print("ready", flush=True)

    def take():
        data, ancillary, _, address = sock.recvmsg(65535, socket.CMSG_SPACE(20))
        if address[2] == socket.PACKET_OUTGOING:
            return
        vlan = None
        for level, kind, aux in ancillary:
            if (level, kind) == (263, 8):  # struct tpacket_auxdata
                status, _, _, _, _, tci, _ = struct.unpack("=IIIHHHH", aux[:20])
                if status & 0x10:  # TP_STATUS_VLAN_VALID
                    vlan = tci & 0xFFF
        line = [data[:6].hex(":"), data[6:12].hex(":"), data[14:].hex(), vlan]
        print(json.dumps(line), flush=True)

    while sys.stdin not in select.select([sock, sys.stdin], [], [])[0]:
        take()
    sock.setblocking(False)
    try:
        while True:
            take()
    except BlockingIOError:
        pass
""")

# A frame that must not arrive would leave in the same pass as those that do: QUIET
# after they arrived (and after the block that sent them) is the time it gets to
# show up. Only tests that assert an absence wait it.
QUIET = 0.5


@dataclass(frozen=True)
class Frame:
    destination: str  # MAC addresses as "02:00:..."
    source: str
    payload: bytes
    vlan: int | None = None  # the VLAN id it arrived with (ETH_P_ALL captures)


def send_frames(
    ns: Namespace,
    dev: str,
    destination: str,
    payload: bytes,
    *,
    source: str | None = None,
    ethertype: int = ETHERTYPE_EXPERIMENTAL,
    count: int = 1,
) -> None:
    """Transmit raw frames on `dev` (from its own MAC unless `source` is given)."""
    ns.run(sys.executable, "-c", SEND_FRAMES, dev, destination, source or "", str(ethertype),
           payload.hex(), str(count))  # fmt: skip


def send_offloaded_frame(ns: Namespace, dev: str, frame: bytes) -> None:
    """Transmit `frame`, which starts with a virtio_net_hdr (packets.virtio_net_hdr)."""
    ns.run(sys.executable, "-c", SEND_OFFLOADED_FRAME, dev, frame.hex())


class Capture(list[Frame]):
    """Frames of one ethertype arriving on a device, appended as they arrive until
    stop() (a capturing process in the device's namespace, read by a thread)."""

    def __init__(self, ns: Namespace, dev: str, ethertype: int) -> None:
        super().__init__()
        self.proc = ns.popen(sys.executable, "-c", CAPTURE_FRAMES, dev, str(ethertype),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self.proc.stdout is not None
        self.ready = self.proc.stdout.readline().strip() == "ready"
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            destination, source, payload, vlan = json.loads(line)
            self.append(Frame(destination, source, bytes.fromhex(payload), vlan))

    def count(self, payload: bytes) -> int:
        """How many of the frames carry `payload`."""
        return sum(f.payload == payload for f in self)

    def stop(self) -> None:
        """Take what arrived until now, and end the capture."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join()


@contextlib.contextmanager
def captures(
    where: list[tuple[Namespace, str]],
    ethertype: int = ETHERTYPE_EXPERIMENTAL,
    *,
    until: Callable[[list[Capture]], bool] | None = None,
    quiet: float = 0.0,
    timeout: float = 10.0,
) -> Iterator[list[Capture]]:
    """Frames of `ethertype` arriving on each (namespace, device) of `where`, from
    before the block runs until it has ended and `until(captures)` holds (at most
    `timeout` s more: the test's own assertions then say what is missing), and for
    `quiet` s after that, which only a test asserting an absence needs (QUIET)."""
    started: list[Capture] = []
    try:
        for ns, dev in where:
            started.append(Capture(ns, dev, ethertype))
            assert started[-1].ready, f"no capture on {dev} in {ns.name}"
        yield started
        if until is not None:
            poll_until(lambda: until(started), timeout, 0.02)
        time.sleep(quiet)
    finally:
        for capture in started:
            capture.stop()


@contextlib.contextmanager
def capture_frames(
    ns: Namespace,
    dev: str,
    ethertype: int = ETHERTYPE_EXPERIMENTAL,
    *,
    until: Callable[[Capture], bool] | None = None,
    quiet: float = 0.0,
    timeout: float = 10.0,
) -> Iterator[Capture]:
    """captures() on one device; `until` takes its frames."""
    whole = None if until is None else lambda started: until(started[0])
    with captures([(ns, dev)], ethertype, until=whole, quiet=quiet, timeout=timeout) as (one,):
        yield one
