"""Memory safety of the native plane under AddressSanitizer (select with -k asan).

Builds tunnel.planes._native with PYVPN_ASAN=1 semantics (-fsanitize=address) into a
temp dir, then runs a driver in a subprocess with libasan preloaded (python
itself is not instrumented) that pushes real traffic through two planes and
then 100k garbage, truncated, oversized and authenticated-but-malformed
datagrams and device reads through them, and initiations through the handshake
worker (real ones and random ones with a right mac1, handed back as admitted,
under load and not, the static key changing).  Any out-of-bounds access aborts the
driver with an "ERROR: AddressSanitizer" report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunnel.lab.testbed import missing_tools

from ..conftest import NATIVE_MISSING, ROOT, needs, unavailable

# Heavy but not timing-sensitive: a fixed load, however long it takes. With the
# fuzzers on a worker of their own in the parallel phase.
pytestmark = [
    needs(NATIVE_MISSING),
    needs(missing_tools(("gcc",))),
    pytest.mark.xdist_group("sanitizers"),
]

DRIVER = textwrap.dedent(r"""
    import importlib.machinery, importlib.util, os, random, select, socket, struct, sys
    import threading, time
    so = sys.argv[1]
    loader = importlib.machinery.ExtensionFileLoader("tunnel.planes._native", so)
    spec = importlib.util.spec_from_file_location("tunnel.planes._native", so, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    sys.modules["tunnel.planes._native"] = mod
    from tunnel.planes import dp
    assert dp.lib is mod.lib
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from tests.packets import QINQ, VLAN, ether, tcp_segment, vlan_tag

    rnd = random.Random(1234)
    stop = threading.Event()

    def drain(sock):
        # No timeout on the socket: the driver sends on it too, and a send must
        # wait for the plane however slow the sanitized build runs.
        while not stop.is_set():
            try:
                if select.select([sock], [], [], 0.2)[0]:
                    sock.recv(70000, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            except (OSError, ValueError):
                return

    def plane(tap, vnet):
        dev_p, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ctl_p, ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        udp.bind(("::", 0))
        p = dp.NativePlane(dev_p.fileno(), udp.fileno(), ctl_p.fileno(), tap=tap,
                               vnet_hdr=vnet, mtu=1420)
        for s in (dev, ctl):
            threading.Thread(target=drain, args=(s,), daemon=True).start()
        return p, dev, udp, (dev_p, ctl_p, ctl)

    kab, kba = os.urandom(32), os.urandom(32)
    A, devA, udpA, keepA = plane(False, True)
    B, devB, udpB, keepB = plane(False, True)
    T, devT, udpT, keepT = plane(True, True)
    for p, me, other, snd, rcv, li, ri in ((A, udpA, udpB, kab, kba, 1, 2),
                                           (B, udpB, udpA, kba, kab, 2, 1)):
        p.add_peer(1)
        p.set_endpoint(1, ("127.0.0.1", other.getsockname()[1]))
        p.set_allowed_ips(1, ["0.0.0.0/0", "::/0"])
        p.install_keypair(1, True, li, ri, snd, rcv)
        p.add_peer(2)  # no keypair: NEED_KEY path
        p.set_allowed_ips(2, ["10.99.0.0/16"])
    for pid in (1, 2, 3):
        T.add_peer(pid)
        T.set_endpoint(pid, ("127.0.0.1", udpB.getsockname()[1]))
        if pid != 3:
            T.install_keypair(pid, True, 100 + pid, 200 + pid, kab, kba)
    for p, crypto_workers in ((A, 2), (B, 0), (T, 2)):  # both ways to seal and open
        p.start(2, crypto_workers)

    def tcp4(seq, payload, flags=0x10, dst="10.0.0.2"):
        # With a correct TCP checksum, so that received segments can coalesce.
        return tcp_segment("10.0.0.1", dst, seq, payload, flags)

    def vnet(flags=0, gso=0, hdr=0, size=0, start=0, off=0):
        return struct.pack("<BBHHHH", flags, gso, hdr, size, start, off)

    def tagged(inner, vid=10, ntags=None):
        # An Ethernet frame behind 0 to 3 VLAN tags (the plane parses up to two).
        ntags = rnd.randrange(4) if ntags is None else ntags
        tags = b"".join(vlan_tag(vid, QINQ if t else VLAN) for t in range(ntags))
        return ether(b"\x02" * 6, b"\x04" * 6, inner, tags)

    # 1. Real traffic: plain, TSO (v4), USO, NEEDS_CSUM, NEED_KEY, through A to B.
    for i in range(300):
        devA.send(vnet() + tcp4(i * 100, os.urandom(100)))
        devA.send(vnet(1, 1, 40, rnd.choice([1, 7, 500, 1380]), 20, 16) +
                  tcp4(i, os.urandom(rnd.randrange(0, 20000))))
        udp = struct.pack("!HHHH", 5, 6, 8 + 3000, 0) + os.urandom(3000)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
        devA.send(vnet(1, 5, 28, 1000, 20, 6) + ip + udp)
        devA.send(vnet(1, 0, 0, 0, 20, 16) + tcp4(5, b"abc"))
        devA.send(vnet() + tcp4(5, b"need key", dst="10.99.0.1"))
        devT.send(vnet() + b"\xff" * 6 + os.urandom(6) + b"\x08\x00" + os.urandom(100))
    # 2. Fuzz the device side: random virtio headers and packets.
    for i in range(20000):
        hdr = bytes(rnd.getrandbits(8) for _ in range(10))
        if i % 2:
            hdr = vnet(1, rnd.choice([1, 4, 5, 0x81]), rnd.randrange(100), rnd.randrange(1, 2000),
                       rnd.randrange(60), rnd.choice([6, 16, rnd.randrange(100)]))
        body = rnd.choice([tcp4(i, os.urandom(rnd.randrange(0, 3000))),
                           os.urandom(rnd.randrange(0, 200)),
                           bytes([0x60]) + os.urandom(rnd.randrange(0, 3000)),
                           tagged(tcp4(i, os.urandom(rnd.randrange(0, 3000))))])
        if rnd.random() < 0.2:
            body = body[: rnd.randrange(len(body) + 1)]
        try:
            (devA if i % 3 else devT).send(hdr[: rnd.choice([10, 10, 10, 3])] + body)
        except BlockingIOError:
            pass
        if i % 500 == 0:
            time.sleep(0.01)

    # 3. 100k datagrams at A: garbage, truncated, oversized, forged, and
    #    authenticated ones with garbage inside (inner parser and GRO).
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    aead = ChaCha20Poly1305(kba)

    def transport(tap, receiver, counter, inner):
        return (bytes([4, tap, 0, 0]) + struct.pack("<IQ", receiver, counter) +
                aead.encrypt(bytes(4) + struct.pack("<Q", counter), inner, None))

    def send(d, i, to):
        try:
            s.sendto(d, ("127.0.0.1", to.getsockname()[1]))
        except OSError:
            pass
        if i % 2000 == 0:
            time.sleep(0.005)

    counter = 10**6
    for i in range(100000):
        k = i % 10
        if k == 0:
            d = os.urandom(rnd.randrange(0, 64))
        elif k == 1:
            d = b"\x04\0\0\0" + os.urandom(rnd.randrange(0, 32))
        elif k == 2:
            d = b"\x04\0\0\0" + struct.pack("<IQ", 1, i) + os.urandom(rnd.randrange(0, 2000))
        elif k == 3:
            d = os.urandom(rnd.choice([1500, 9000, 65000]))
        elif k == 4:
            d = b"\x04\x01\0\0" + os.urandom(100)
        else:
            counter += 1
            if k in (5, 6):
                inner = tcp4(counter * 10, os.urandom(rnd.choice([0, 10, 1000])),
                             flags=rnd.choice([0x10, 0x18, 0x11, 0x02]))
                inner = bytearray(inner)
                if k == 6:
                    pos = rnd.randrange(len(inner))
                    inner[pos] = rnd.getrandbits(8)
                inner = bytes(inner)
            elif k == 7:
                inner = bytes([0x45]) + os.urandom(rnd.randrange(0, 100))
            elif k == 8:
                inner = bytes([0x60]) + os.urandom(rnd.randrange(0, 100))
            else:
                inner = os.urandom(rnd.randrange(0, 64))
            inner += bytes(-len(inner) % 16)
            d = transport(0, 1, counter, inner)
        send(d, i, udpA)
    # 3b. Initiations at A's handshake worker, their mac1 right: real ones,
    #     and random bodies; some handed back as admitted, under load and not,
    #     and A's static key changed while they wait.
    from tunnel.protocol import keys
    from tunnel.protocol.cookie import CookieGenerator
    from tunnel.protocol.noise import INITIAL_CHAINING_KEY, Handshake, StaticIdentity

    def keyed(p, private):
        identity = StaticIdentity(private)
        p.set_mac1_key(CookieGenerator(identity.public_key).mac1_key)
        p.set_static_key(private, INITIAL_CHAINING_KEY, identity.responder_hash)
        return identity

    me = keyed(A, keys.generate_private_key())
    macs = CookieGenerator(me.public_key)
    real = [Handshake(StaticIdentity(keys.generate_private_key()), me.public_key)
            .create_initiation(i, os.urandom(32), os.urandom(12)).pack() for i in range(50)]
    for i in range(3000):
        body = real[i % 50] if i % 2 else bytes([1, 0, 0, 0]) + os.urandom(144)
        d = macs.add_macs(body, 0.0)
        send(d, i, udpA)
        if i % 7 == 0:
            try:
                A.submit_handshake(d, ("127.0.0.1", 1000 + i))
            except OSError:  # the queue is full
                pass
        if i % 500 == 0:
            A.set_under_load(time.clock_gettime_ns(time.CLOCK_BOOTTIME) + 10**8 * (i % 1000 == 0))
        if i == 1500:
            keyed(A, keys.generate_private_key())
    time.sleep(0.5)
    A.set_static_key(bytes(32), INITIAL_CHAINING_KEY, bytes(32))
    # 4. Authenticated frames into the tap plane: TCP segments in and out of
    #    order on VLANs (tags parsed, GRO), whole, corrupted and cut short.
    for i in range(20000):
        # Three VLANs (i % 3) with 0, 1 and 2 tags, mostly full segments in sequence.
        seg = tcp4(1000 * (i // 3), os.urandom(rnd.choice([0, 10, 1000, 1000, 1000])),
                   flags=rnd.choice([0x10, 0x10, 0x10, 0x18, 0x11]))
        inner = tagged(seg, vid=i % 3, ntags=None if i % 5 == 0 else i % 3)
        inner = bytearray(inner[: rnd.randrange(len(inner) + 1)] if i % 7 == 0 else inner)
        if i % 11 == 0 and inner:
            inner[rnd.randrange(len(inner))] = rnd.getrandbits(8)
        send(transport(1, 101, i, bytes(inner)), i, udpT)
    time.sleep(1.0)
    # Reconfigure while running.
    for i in range(200):
        A.install_keypair(1, False, 1000 + i, 5, os.urandom(32), kba)
        A.set_allowed_ips(1, ["0.0.0.0/0", "::/0", "10.%d.0.0/16" % (i % 250)])
        A.set_allowed_ips(2, [])
        A.add_peer(50 + i); A.remove_peer(50 + i)
        T.mac_table(); A.stats(1); A.interface_stats()
    print("stats", A.interface_stats(), B.stats(1), T.interface_stats(), T.stats(1), flush=True)
    assert T.interface_stats().rx_coalesced > 0, "tap GRO never ran"
    stop.set()
    for p in (A, B, T):
        p.close()
    print("driver ok", flush=True)
""")


def test_asan_fuzz(tmp_path: Path) -> None:
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    if not libasan or not os.path.exists(libasan):
        unavailable("libasan is not installed")
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import build; "
            "print(build.make_ffibuilder(asan=True).compile(tmpdir=sys.argv[2]))",
            str(ROOT / "native"),
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYVPN_ASAN": "1"},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    so = build.stdout.strip().splitlines()[-1]
    assert os.path.exists(so)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {
        **os.environ,
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": "detect_leaks=0",
        "PYTHONPATH": str(ROOT),
    }
    run = subprocess.run(
        [sys.executable, str(driver), so],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert "ERROR: AddressSanitizer" not in run.stderr, run.stderr[-6000:]
    assert run.returncode == 0, run.stderr[-6000:]
    assert "driver ok" in run.stdout
