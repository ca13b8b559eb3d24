"""The native data plane against an independent implementation of the wire format.

The plane's device is a SOCK_DGRAM socketpair (one packet per read, like TUN),
its control channel a SOCK_SEQPACKET socketpair, and the remote peer is this
test: a UDP socket and `cryptography`'s ChaCha20Poly1305.  So every byte the C
code puts on the wire is checked by code that shares nothing with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from tunnel.host import udp
from tunnel.lab.testbed import pyvpn_env
from tunnel.planes import dp
from tunnel.protocol import crypto
from tunnel.protocol.constants import (
    ICMP_ERRORS_BURST,
    ICMP_ERRORS_PER_SECOND,
    LABEL_MAC1,
    MAX_STAGED_PACKETS,
    RATELIMIT_BURST,
    RATELIMIT_PACKETS_PER_SECOND,
)

from ..conftest import NATIVE_MISSING, needs
from ..packets import (
    QINQ,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    csum,
    ether,
    partial_tcp_csum,
    pseudo4,
    tcp_segment,
    udp_packet,
    virtio_net_hdr,
    vlan_tag,
)
from ..waiting import wait_until
from .native_harness import WAIT, Harness, Remote

pytestmark = needs(NATIVE_MISSING)

REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
UDP_GRO = 104  # <linux/udp.h>
SO_NO_CHECK = 11  # <asm-generic/socket.h>


# ---- harness ------------------------------------------------------------------------


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


# ---- tests ---------------------------------------------------------------------------


def test_rfc8439_aead_vector() -> None:
    """RFC 8439 section 2.8.2 through the exact EVP code path the plane uses."""
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    pt = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
        b"for the future, sunscreen would be it."
    )
    ct = bytes.fromhex(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
        "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
        "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116"
    )
    tag = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")
    assert dp.aead_seal(key, nonce, aad, pt) == ct + tag
    assert dp.aead_open(key, nonce, aad, ct + tag) == pt
    assert dp.aead_open(key, nonce, aad, ct + bytes(16)) is None
    assert dp.aead_open(key, nonce, aad[:-1], ct + tag) is None


def test_replay_window_semantics() -> None:
    """The kernel's counter_validate(): once each, 8128 behind the highest."""
    w = dp.ReplayWindow()
    assert dp.ReplayWindow.window_size() >= 8128
    assert w.check(0) and not w.check(0)
    assert w.check(5) and w.check(2) and not w.check(2) and not w.check(5)
    assert w.check(10000)
    assert w.check(10000 - 8128) and not w.check(10000 - 8128)
    assert not w.check(10000 - 8129)  # just outside the window
    assert w.check(9000) and not w.check(9000)
    assert w.check(30000) and not w.check(10000)  # a big jump clears the ring
    assert w.check(30000 - 64) and w.check(29999)
    assert not w.check(REJECT_AFTER_MESSAGES)
    assert w.check(REJECT_AFTER_MESSAGES - 1)


def test_send_agrees_with_cryptography(h: Harness) -> None:
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.start()
    pkt = udp_packet("10.0.0.1", "10.0.0.2", b"A" * 33)  # 61 bytes -> padded to 64
    h.dev.send(pkt)
    counter, plain, msg = r.recv()
    assert counter == 0
    assert plain == pkt + bytes(3)
    assert len(msg) == 16 + 64 + 16
    big = udp_packet("10.0.0.1", "10.0.0.2", b"B" * (1420 - 28 - 3))  # 1417: pad to MTU only
    h.dev.send(big)
    counter, plain, _ = r.recv()
    assert counter == 1 and plain == big + bytes(3)
    st = h.plane.stats(1)
    assert st.tx_packets == 2 and st.tx_bytes == len(msg) + 16 + 1420 + 16
    assert st.last_tx_data_ns and st.current_send_counter == 2
    assert st.endpoint == r.sock.getsockname()
    r.close()


def test_padding_follows_a_new_mtu(h: Harness) -> None:
    """The device's MTU changed after start (pyvpn-wg under `ip link set mtu`):
    padding stops at the new one."""
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.start()
    pkt = udp_packet("10.0.0.1", "10.0.0.2", b"C" * (1297 - 28))  # 1297: to 1312 at 1420
    h.dev.send(pkt)
    assert r.recv()[1] == pkt + bytes(15)
    h.plane.set_mtu(1300)
    h.dev.send(pkt)
    assert r.recv()[1] == pkt + bytes(3)  # to the MTU only
    # Without virtio headers the reads were sized for the MTU at start: no larger one.
    for refused in (67, 1421, 70000):
        with pytest.raises(OSError) as e:
            h.plane.set_mtu(refused)
        assert e.value.errno == errno.EINVAL
    r.close()


def test_receive_agrees_with_cryptography(h: Harness) -> None:
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.start()
    pkt = udp_packet("10.0.0.2", "10.0.0.1", b"hello")
    r.send(pkt)
    assert h.read_dev() == pkt  # padding stripped by the IPv4 total length
    st = h.plane.stats(1)
    assert st.rx_packets == 1 and st.last_rx_data_ns and st.drop_bad_tag == 0
    # A forged tag is dropped and counted, and does not burn the counter.
    bad = bytearray(r.seal(pkt, counter=1))
    bad[-1] ^= 1
    r.sock.sendto(bytes(bad), ("127.0.0.1", h.port))
    r.send(pkt, counter=1)
    assert h.read_dev() == pkt
    assert h.plane.stats(1).drop_bad_tag == 1
    r.close()


def test_a_keypair_made_after_the_clock_was_read_is_fresh(h: Harness) -> None:
    """A worker reads the clock before it takes the lock, so a keypair installed
    meanwhile is born after `now`: a negative age, not 2^64 ns (which made fresh
    keypairs divert as NEED_KEY). Reject-After-Time still holds."""
    Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",)).close()
    assert h.plane.usable_at(1, -1_000_000) == 0
    assert h.plane.usable_at(1, 179 * 10**9) == 0
    assert h.plane.usable_at(1, 180 * 10**9) == -errno.EKEYEXPIRED


def test_a_cleared_keypair_leaves_no_key_in_the_workers(h: Harness) -> None:
    """A worker's AEAD context keeps the key schedule of the last key it used;
    once that keypair is gone, the worker overwrites it (at most a poll timeout
    later), so that zeroing key material reaches every copy of it."""
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.start()
    r.send(udp_packet("10.0.0.2", "10.0.0.1", b"in"))
    h.read_dev()
    h.dev.send(udp_packet("10.0.0.1", "10.0.0.2", b"out"))
    r.recv()
    assert h.plane.cached_keys() == 2  # the worker's receive and send contexts
    h.plane.clear_keypair(1, dp.SLOT_CURRENT)
    wait_until(lambda: h.plane.cached_keys() == 0, "keys dropped from the cache", 3)
    assert h.plane.cached_keys() == 0
    r.close()


def test_replay_through_datagrams(h: Harness) -> None:
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.start()

    def pkt(n: int) -> bytes:
        return udp_packet("10.0.0.2", "10.0.0.1", n.to_bytes(4, "big"))

    for c in (5, 5, 3, 3, 9000, 9000 - 8128, 9000 - 8129, 4):
        r.send(pkt(c), counter=c)
        time.sleep(0.01)  # keep the order the test means
    got = []
    while True:
        try:
            got.append(int.from_bytes(h.read_dev(0.5)[-4:], "big"))
        except TimeoutError:
            break
    assert got == [5, 3, 9000, 9000 - 8128]
    assert h.plane.stats(1).drop_replay == 4
    r.close()


def test_several_workers_share_one_counter_and_lose_nothing(h: Harness) -> None:
    """dp_start(N): workers race for the same device and socket; every message
    still gets its own nonce, and everything arrives once."""
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.plane.start(3)
    assert h.plane.interface_stats().workers == 3
    out = [udp_packet("10.0.0.1", "10.0.0.2", i.to_bytes(4, "big")) for i in range(300)]
    got = []
    for i in range(0, len(out), 50):  # within the remote socket's receive buffer
        for pkt in out[i : i + 50]:
            h.dev.send(pkt)
        got += [r.recv() for _ in out[i : i + 50]]
    assert sorted(counter for counter, _, _ in got) == list(range(len(out)))
    assert sorted(plain[: len(out[0])] for _, plain, _ in got) == sorted(out)
    back = [udp_packet("10.0.0.2", "10.0.0.1", i.to_bytes(4, "big")) for i in range(300)]
    assert sorted(r.delivered(back)) == sorted(back)
    h.no_dev()
    r.close()


def test_a_new_socket_on_the_udp_fd_carries_on_set_up_as_the_first(h: Harness) -> None:
    """A new listen port (NativeShell.replace_socket): the new socket is dup2()ed onto
    the UDP fd while the workers are stopped, then set up as dp_create did."""
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.start()
    new = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    new.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    new.bind(("::", 0))
    with pytest.raises(OSError) as busy:
        h.plane.udp_replaced()
    assert busy.value.errno == errno.EBUSY
    h.plane.stop()
    os.dup2(new.fileno(), h.udp.fileno())
    new.close()
    h.plane.udp_replaced()
    h.plane.start(1)
    h.port = h.udp.getsockname()[1]
    assert h.udp.getsockopt(socket.SOL_UDP, UDP_GRO) == 1  # set up as the first was
    h.dev.send(udp_packet("10.0.0.1", "10.0.0.2", b"out"))
    counter, _, _ = r.recv()
    assert counter == 0
    r.send(udp_packet("10.0.0.2", "10.0.0.1", b"in"))
    assert h.read_dev().endswith(b"in")
    r.close()


def test_keepalive_and_send_packet(h: Harness) -> None:
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.plane.send_packet(1, b"")
    counter, plain, msg = r.recv()
    assert (counter, plain, len(msg)) == (0, b"", 32)
    st = h.plane.stats(1)
    assert st.last_tx_ns and not st.last_tx_data_ns
    pkt = udp_packet("10.0.0.1", "10.0.0.2", b"queued")
    h.plane.send_packet(1, pkt)
    assert r.recv()[1].rstrip(b"\0") == pkt.rstrip(b"\0")
    h.plane.clear_keypair(1, dp.SLOT_CURRENT)
    with pytest.raises(OSError) as e:
        h.plane.send_packet(1, pkt)
    assert e.value.errno == errno.ENOKEY
    r.close()


def test_packets_without_a_session_wait_in_c_and_python_hears_once(h: Harness) -> None:
    """Packets for a peer without a session wait in C (the kernel's staged queue);
    Python hears once that the peer needs a key, not once a packet. The session
    comes, and the keepalive Python asks for after its response carries them
    instead, in the order they were read."""
    h.plane.add_peer(7)
    h.plane.set_allowed_ips(7, ["10.7.0.0/16"])
    h.start()
    pkts = [udp_packet("10.0.0.1", "10.7.1.1", b"packet %d" % i) for i in range(3)]
    for pkt in pkts:
        h.dev.send(pkt)
    up = h.upcall()
    assert (up.kind, up.peer_id, up.payload) == (dp.UpcallKind.NEED_KEY, 7, b"")
    h.no_upcall()
    assert h.plane.stats(7).staged_packets == 3
    assert h.plane.stats(7).drop_no_keypair == 3
    r = Remote(h, 8, 0x1111, 0x2222)  # a socket to be peer 7's endpoint
    h.plane.set_endpoint(7, r.sock.getsockname())
    r.peer_id = 7
    r.rekey(0x7777, 0x8888)
    h.plane.send_packet(7, b"")
    assert [r.recv()[1][: len(pkts[0])] for _ in pkts] == pkts
    r.nothing()  # no keepalive: the packets went in its place
    assert h.plane.stats(7).staged_packets == 0
    r.close()


def test_a_full_staged_queue_drops_its_oldest_counted(h: Harness) -> None:
    h.plane.add_peer(7)
    h.plane.set_allowed_ips(7, ["10.7.0.0/16"])
    h.start()
    pkts = [udp_packet("10.0.0.1", "10.7.1.1", b"%d" % i) for i in range(MAX_STAGED_PACKETS + 5)]
    for i in range(0, len(pkts), 8):  # the fake device queues 10 datagrams at most
        for pkt in pkts[i : i + 8]:
            h.dev.send(pkt)
        while h.plane.stats(7).drop_no_keypair < min(i + 8, len(pkts)):
            time.sleep(0.01)
    assert h.plane.stats(7).staged_packets == MAX_STAGED_PACKETS
    assert h.plane.stats(7).staged_overflow == 5
    r = Remote(h, 8, 0x1111, 0x2222)
    h.plane.set_endpoint(7, r.sock.getsockname())
    r.peer_id = 7
    r.rekey(0x7777, 0x8888)
    h.plane.send_packet(7, b"")
    got = [r.recv()[1][: len(pkts[-1])].rstrip(b"\0") for _ in range(MAX_STAGED_PACKETS)]
    assert got == [p.rstrip(b"\0") for p in pkts[5:]]
    r.close()


def test_routing_longest_prefix(h: Harness) -> None:
    r1 = Remote(h, 1, 0x11, 0x21, ("10.0.0.0/8",))
    r2 = Remote(h, 2, 0x12, 0x22, ("10.1.0.0/16",))
    h.start()
    p2 = udp_packet("10.9.9.9", "10.1.2.3", b"to two")
    p1 = udp_packet("10.9.9.9", "10.2.0.1", b"to one")
    h.dev.send(p2)
    h.dev.send(p1)
    assert r2.recv()[1].startswith(p2)
    assert r1.recv()[1].startswith(p1)
    unrouted(h, "192.0.2.1", r1, r2)
    r1.close()
    r2.close()


def unrouted(h: Harness, dst: str, *remotes: Remote) -> None:
    """A packet to `dst` reaches none of the remotes, is counted as unrouted and goes
    up to Python for its ICMP answer."""
    before = h.plane.interface_stats().tx_no_route
    pkt = udp_packet("10.9.9.9", dst, b"nowhere")
    h.dev.send(pkt)
    for remote in remotes:
        remote.nothing()
    assert h.plane.interface_stats().tx_no_route == before + 1
    up = h.upcall()
    assert up.kind == dp.UpcallKind.UNROUTED and up.payload == pkt


def test_allowed_ips_are_replaced_whole_and_moved_between_peers(h: Harness) -> None:
    r1 = Remote(h, 1, 0x11, 0x21, ("10.1.0.0/16", "10.3.0.0/16"))
    r2 = Remote(h, 2, 0x12, 0x22, ())
    h.start()
    # A bad prefix anywhere in the list refuses the whole set: nothing changes.
    bad = dp.ffi.new("struct dp_prefix[]", 2)
    bad[0].family, bad[0].cidr = socket.AF_INET, 16
    bad[1].family, bad[1].cidr = socket.AF_INET, 33
    assert dp.lib.dp_allowed_ips_set(h.plane._handle(), 1, bad, 2) == -errno.EINVAL
    for dst in ("10.1.0.1", "10.3.0.1"):
        pkt = udp_packet("10.9.9.9", dst, dst.encode())
        h.dev.send(pkt)
        assert r1.recv()[1].startswith(pkt)
    h.plane.set_allowed_ips(1, ["10.2.0.0/16"])  # 10.1/16 and 10.3/16 go
    h.plane.set_allowed_ips(2, ["10.3.0.0/16"])
    for dst, remote in (("10.2.0.1", r1), ("10.3.0.1", r2)):
        pkt = udp_packet("10.9.9.9", dst, dst.encode())
        h.dev.send(pkt)
        assert remote.recv()[1].startswith(pkt)
    unrouted(h, "10.1.0.1", r1, r2)
    r1.close()
    r2.close()


@pytest.mark.serial
def test_unrouted_packets_go_up_no_faster_than_python_answers(h: Harness) -> None:
    """A burst, then one a millisecond (ICMP_ERRORS_*). Packets queued before the
    plane starts arrive at once, so only a burst of them goes up; a second round
    sent `gap` later adds one for each millisecond between the two."""
    per_round, gap = 4 * ICMP_ERRORS_BURST, 0.02
    h.dev.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)

    def send_round() -> None:
        for i in range(per_round):
            h.dev.send(udp_packet("10.9.9.9", "192.0.2.1", b"%d" % i))

    def counted(n: int) -> None:
        wait_until(lambda: h.plane.interface_stats().tx_no_route >= n, "count", WAIT, 0.001)
        assert h.plane.interface_stats().tx_no_route == n  # every one counted

    send_round()
    started = time.monotonic()
    h.start()
    counted(per_round)
    time.sleep(gap)
    send_round()
    counted(2 * per_round)
    elapsed = time.monotonic() - started
    ups = 0
    with contextlib.suppress(TimeoutError):
        while h.upcall(timeout=0.2).kind == dp.UpcallKind.UNROUTED:
            ups += 1
    # Whatever the machine's pace: no fewer than the gap allows, and no more than
    # the whole time the plane had (a few milliseconds more than the gap).
    assert ups >= ICMP_ERRORS_BURST + gap * ICMP_ERRORS_PER_SECOND - 1
    assert ups <= ICMP_ERRORS_BURST + elapsed * ICMP_ERRORS_PER_SECOND + 1
    assert h.plane.interface_stats().upcalls_dropped == 0


def test_allowed_ips_source_check(h: Harness) -> None:
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.start()
    r.send(udp_packet("10.0.0.3", "10.0.0.1", b"spoofed"))
    h.no_dev()
    assert h.plane.stats(1).drop_bad_source == 1
    r.send(udp_packet("10.0.0.2", "10.0.0.1", b"fine"))
    assert h.read_dev().endswith(b"fine")
    # Malformed inner packets: wrong version, inconsistent length.
    r.send(b"\x55" * 40)
    r.send(bytearray(udp_packet("10.0.0.2", "10.0.0.1", b"x")) + b"")  # fine, control
    assert h.read_dev().endswith(b"x")
    bad = bytearray(udp_packet("10.0.0.2", "10.0.0.1", b"y" * 20))
    bad[2:4] = struct.pack("!H", 200)  # claims more than it carries
    r.send(bytes(bad))
    h.no_dev()
    assert h.plane.stats(1).drop_malformed == 2
    r.close()


def test_other_datagrams_go_up_unchanged(h: Harness) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    h.start()
    junk = [
        bytes([1, 0, 0, 0]) + os.urandom(144),  # a handshake initiation's shape
        bytes([2, 0, 0, 0]) + os.urandom(88),
        bytes([4, 1, 0, 0]) + os.urandom(60),  # a tap peer talking to a tun plane
        b"\x04",
        b"hello",
    ]
    for d in junk:
        s.sendto(d, ("127.0.0.1", h.port))
    for d in junk:
        up = h.upcall()
        assert up.kind == dp.UpcallKind.DATAGRAM
        assert up.payload == d and up.address == s.getsockname()
    # A transport message with an unknown index is dropped, not sent up.
    s.sendto(bytes([4, 0, 0, 0]) + os.urandom(60), ("127.0.0.1", h.port))
    h.no_upcall()
    assert h.plane.interface_stats().rx_unknown_index == 1
    s.close()


@pytest.mark.serial
def test_a_flooding_source_gets_its_share_while_python_is_behind(h: Harness) -> None:
    flooder, other = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    flooder.bind(("127.0.0.1", 0))
    other.bind(("127.0.0.2", 0))
    target = ("127.0.0.1", h.port)
    initiation = bytes([1, 0, 0, 0]) + bytes(144)
    h.start()

    def drained() -> list[dp.Upcall]:
        ups = []
        with contextlib.suppress(TimeoutError):
            while True:
                ups.append(h.upcall(timeout=0.2))
        return ups

    # While Python (this test) keeps up, everything goes up, however much.
    for _ in range(50):
        flooder.sendto(initiation, target)
    assert len(drained()) == 50
    # Python stops reading, and the control socket overflows.
    deadline = time.monotonic() + WAIT
    while h.plane.interface_stats().upcalls_dropped == 0 and time.monotonic() < deadline:
        for _ in range(50):
            flooder.sendto(initiation, target)
    assert h.plane.interface_stats().upcalls_dropped > 0
    drained()
    overflowed = time.monotonic()  # no later: the control socket is empty now
    # Now the flooding source gets a source's share, and another source still
    # gets through beside it.
    limited, kernel_drops = h.plane.interface_stats().rx_ratelimited, udp.drops(h.udp)
    started = time.monotonic()
    for _ in range(200):
        flooder.sendto(initiation, target)
    other.sendto(b"another source", target)
    ups = drained()
    elapsed = time.monotonic() - started
    up_from_flooder = sum(up.address == flooder.getsockname() for up in ups)
    assert [up.payload for up in ups if up.address == other.getsockname()] == [b"another source"]
    assert up_from_flooder <= RATELIMIT_BURST + elapsed * RATELIMIT_PACKETS_PER_SECOND + 1
    limited = h.plane.interface_stats().rx_ratelimited - limited
    assert limited + up_from_flooder + udp.drops(h.udp) - kernel_drops == 200
    assert limited > 100
    # A second after the last overflow Python counts as keeping up again, though
    # the source never let up: refusals do not prolong it, so a spoofer cannot keep
    # another address's share spent.
    late = bytes([1, 0, 0, 0]) + b"late" + bytes(140)
    sent = sent_late = 0
    while (now := time.monotonic()) < overflowed + 1.5:
        is_late = now > overflowed + 1.1
        flooder.sendto(late if is_late else initiation, target)
        sent, sent_late = sent + 1, sent_late + is_late
        time.sleep(0.01)  # 100/s: over the share
    ups = drained()
    assert sent_late > 10
    assert sum(up.payload == late for up in ups) == sent_late
    assert len(ups) < sent  # rationed until then
    flooder.close()
    other.close()


def test_handshakes_with_a_wrong_mac1_stay_in_c(h: Harness) -> None:
    key = crypto.hash_(LABEL_MAC1 + os.urandom(32))
    h.plane.set_mac1_key(key)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    h.start()

    def macs(body: bytes, right: bool = True) -> bytes:
        return body + (crypto.mac(key, body) if right else os.urandom(16)) + bytes(16)

    initiation = bytes([1, 0, 0, 0]) + os.urandom(112)
    tap_initiation = bytes([1, 1, 0, 0]) + os.urandom(112)
    response = bytes([2, 0, 0, 0]) + os.urandom(56)
    wrong = [macs(m, right=False) for m in (initiation, tap_initiation, response)]
    python_judges = [
        *(macs(m) for m in (initiation, tap_initiation, response)),
        bytes([3, 0, 0, 0]) + os.urandom(60),  # a cookie reply has no mac1
        bytes([1, 0, 0, 0]) + os.urandom(100),  # a wrong size is Python's to count
        bytes([1, 2, 0, 0]) + os.urandom(144),  # and so are bad reserved bytes
    ]
    for d in wrong + python_judges:
        s.sendto(d, ("127.0.0.1", h.port))
    up = sorted(h.upcall().payload for _ in python_judges)
    assert up == sorted(python_judges)
    h.no_upcall()
    assert h.plane.interface_stats().rx_bad_mac1 == len(wrong)
    s.close()


def test_roaming_updates_endpoint(h: Harness) -> None:
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.start()
    moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    moved.bind(("127.0.0.1", 0))
    moved.sendto(r.seal(udp_packet("10.0.0.2", "10.0.0.1", b"from afar")), ("127.0.0.1", h.port))
    assert h.read_dev().endswith(b"from afar")
    up = h.upcall()
    assert up.kind == dp.UpcallKind.ENDPOINT_CHANGED and up.peer_id == 1
    assert up.address == moved.getsockname()
    assert h.plane.stats(1).endpoint == moved.getsockname()
    # Unauthenticated traffic from elsewhere does not move it.
    r.sock.sendto(r.seal(b"", counter=99, key=os.urandom(32)), ("127.0.0.1", h.port))
    h.no_upcall()
    h.dev.send(udp_packet("10.0.0.1", "10.0.0.2", b"reply"))
    moved.settimeout(WAIT)
    assert moved.recv(2000)[:4] == b"\x04\0\0\0"
    moved.close()
    r.close()


def test_keypair_confirmed_on_next(h: Harness) -> None:
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    new_to, new_from = os.urandom(32), os.urandom(32)
    h.plane.install_keypair(1, False, 0x3333, 0x4444, new_to, new_from)  # responder: NEXT
    h.start()
    h.dev.send(udp_packet("10.0.0.1", "10.0.0.2", b"old"))
    assert r.recv()[1].startswith(udp_packet("10.0.0.1", "10.0.0.2", b"old"))
    r.send(udp_packet("10.0.0.2", "10.0.0.1", b"on next"), counter=0, index=0x3333, key=new_from)
    assert h.read_dev().endswith(b"on next")
    up = h.upcall()
    assert up.kind == dp.UpcallKind.KEYPAIR_CONFIRMED and up.peer_id == 1
    st = h.plane.stats(1)
    assert st.has_current and st.has_previous and not st.has_next
    assert st.current_local_index == 0x3333
    assert st.current_send_counter == 0
    h.dev.send(udp_packet("10.0.0.1", "10.0.0.2", b"new"))
    counter, plain, _ = r.recv(key=new_to, index=0x4444)
    assert counter == 0 and plain.startswith(udp_packet("10.0.0.1", "10.0.0.2", b"new"))
    # PREVIOUS still decrypts late packets.
    r.send(udp_packet("10.0.0.2", "10.0.0.1", b"late"), counter=5)
    assert h.read_dev().endswith(b"late")
    r.close()


def test_install_keypair_follows_add_new_keypair(h: Harness) -> None:
    h.plane.add_peer(1)
    k1, k2, k3 = (os.urandom(32) for _ in range(3))
    h.plane.install_keypair(1, False, 1, 11, k1, k1)  # responder: NEXT
    st = h.plane.stats(1)
    assert (st.has_current, st.has_next) == (False, True)
    h.plane.install_keypair(1, True, 2, 12, k2, k2)  # initiator: NEXT -> PREVIOUS
    st = h.plane.stats(1)
    assert (st.has_current, st.has_previous, st.has_next) == (True, True, False)
    with pytest.raises(OSError) as e:
        h.plane.install_keypair(1, True, 2, 13, k3, k3)  # index in use
    assert e.value.errno == errno.EEXIST
    # A send key the peer holds again would restart its nonces: refused.
    with pytest.raises(OSError) as e:
        h.plane.install_keypair(1, True, 3, 13, k2, k3)
    assert e.value.errno == errno.EKEYREJECTED
    st = h.plane.stats(1)
    assert (st.has_current, st.current_local_index, st.has_previous) == (True, 2, True)


def test_reject_after_messages(h: Harness) -> None:
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.start()
    pkt = udp_packet("10.0.0.2", "10.0.0.1", b"x")
    r.send(pkt, counter=REJECT_AFTER_MESSAGES)
    r.send(pkt, counter=REJECT_AFTER_MESSAGES - 1)
    assert h.read_dev() == pkt
    h.no_dev()
    assert h.plane.stats(1).drop_expired_keypair == 1
    r.close()


def test_c_sends_nothing_past_reject_after_messages_and_asks_for_a_key(h: Harness) -> None:
    """The last counter a keypair may use is REJECT_AFTER_MESSAGES - 1; a packet
    after it waits for a new key (NEED_KEY: Python handshakes), never out on the
    worn key."""
    r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
    h.plane.set_send_counter(1, REJECT_AFTER_MESSAGES - 1)
    h.start()
    last = udp_packet("10.0.0.1", "10.0.0.2", b"last")
    h.dev.send(last)
    counter, plain, _ = r.recv()
    assert counter == REJECT_AFTER_MESSAGES - 1 and plain.startswith(last)
    over = udp_packet("10.0.0.1", "10.0.0.2", b"over")
    h.dev.send(over)
    up = h.upcall()
    assert (up.kind, up.peer_id, up.payload) == (dp.UpcallKind.NEED_KEY, 1, b"")
    with pytest.raises(OSError) as e:
        h.plane.send_packet(1, b"")  # Python's keepalive: refused the same way
    assert e.value.errno == errno.ENOKEY
    r.nothing()
    assert h.plane.stats(1).drop_expired_keypair == 1
    r.rekey(0x3333, 0x4444)
    h.plane.send_packet(1, b"")
    counter, plain, _ = r.recv()
    assert counter == 0 and plain.startswith(over)
    r.close()


def test_segments_past_reject_after_messages_go_up_for_a_new_key() -> None:
    """A super-packet whose segments outrun the counter: those within it go out,
    the rest wait for a new key, segmented, as a read without a session does."""
    h = Harness(vnet=True)
    try:
        r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
        h.plane.set_send_counter(1, REJECT_AFTER_MESSAGES - 2)
        h.start()
        payload = os.urandom(4 * 536)
        opts = b"\x01\x01\x08\x0a" + bytes(8)  # as Linux sends: timestamps
        sup = bytearray(tcp_segment("10.0.0.1", "10.0.0.2", 0, payload, flags=0x18, opts=opts))
        sup[16 + 20 : 18 + 20] = b"\0\0"
        h.dev.send(struct.pack("<BBHHHH", 1, 1, 52, 536, 20, 16) + bytes(sup))  # TCPV4
        sent = [r.recv()[1] for _ in range(2)]
        r.nothing()
        assert h.upcall().kind is dp.UpcallKind.NEED_KEY
        h.no_upcall()  # once, not once a segment
        assert h.plane.stats(1).drop_expired_keypair == 2
        r.rekey(0x3333, 0x4444)
        h.plane.send_packet(1, b"")
        waiting = [r.recv()[1] for _ in range(2)]
        # Sequence numbers: the first two segments went, the last two waited.
        seqs = [struct.unpack_from("!I", p, 24)[0] for p in sent + waiting]
        assert seqs == [0, 536, 1072, 1608]
        assert [p[52 : 52 + 536] for p in waiting] == [payload[1072:1608], payload[1608:]]
        r.close()
    finally:
        h.close()


def test_tap_learning_and_flooding() -> None:
    h = Harness(tap=True)
    try:
        rs = [Remote(h, i, 0x100 + i, 0x200 + i, tap=True) for i in (1, 2, 3)]
        h.start()
        me = bytes.fromhex("020000000001")
        macs = {i: bytes.fromhex(f"0200000000a{i}") for i in (1, 2, 3)}
        bcast = ether(b"\xff" * 6, me, b"who-has" * 9)
        h.dev.send(bcast)
        for r in rs:
            _, plain, msg = r.recv()
            assert plain == bcast and len(msg) == 32 + len(bcast)  # tap: never padded
        # Peer 2 speaks: its MAC is learned from the authenticated frame.
        frame = ether(me, macs[2], b"is-at" * 10)
        rs[1].send(frame)
        assert h.read_dev() == frame
        table = h.plane.mac_table()
        assert [(e.mac, e.peer_id) for e in table] == [(bytes.fromhex("0200000000a2"), 2)]
        assert (h.plane.mac_owner(macs[2]), h.plane.mac_owner(macs[1])) == (2, None)
        uni = ether(macs[2], me, b"unicast" * 8)
        h.dev.send(uni)
        assert rs[1].recv()[1] == uni
        rs[0].nothing()
        rs[2].nothing()
        # Unknown unicast floods.
        unk = ether(macs[3], me)
        h.dev.send(unk)
        for r in rs:
            assert r.recv()[1] == unk
        # A tun-marked message is another mode's: it goes up, not to the device.
        rs[0].sock.sendto(bytes([4, 0, 0, 0]) + os.urandom(60), ("127.0.0.1", h.port))
        assert h.upcall().kind == dp.UpcallKind.DATAGRAM
        # Ageing.
        h.plane.set_mac_ageing(0)
        assert h.plane.mac_table() == []
        assert h.plane.mac_owner(macs[2]) is None
        for r in rs:
            r.close()
    finally:
        h.close()


@pytest.mark.parametrize(
    ("gso_size", "segment"),
    [
        # A 1420-byte MTU stream (52 bytes of IPv4 + TCP with timestamps): the
        # plane cuts 1356-byte segments, so each plaintext is 1408 bytes, 22
        # whole ChaCha20 blocks, which OpenSSL seals faster than 1420.
        (1368, 1356),
        # Small segments are cut where the kernel asked.
        (536, 536),
    ],
)
def test_tso_super_packet_is_split(gso_size: int, segment: int) -> None:
    """A virtio_net_hdr TCP super-packet (as TUN gives with TSO) becomes segments."""
    h = Harness(vnet=True)
    try:
        r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
        h.start()
        payload = os.urandom(4500)
        sup = bytearray(
            tcp_segment(
                "10.0.0.1",
                "10.0.0.2",
                1000,
                payload,
                flags=0x18,
                opts=b"\x01\x01\x08\x0a" + bytes(8),
            )
        )
        sup[16 + 20 : 18 + 20] = b"\0\0"  # kernel leaves a partial sum; the plane recomputes
        vh = struct.pack("<BBHHHH", 1, 1, 52, gso_size, 20, 16)  # NEEDS_CSUM, TCPV4
        h.dev.send(vh + bytes(sup))
        got = b""
        count = -(-len(payload) // segment)
        for i in range(count):
            _, plain, _ = r.recv()
            tot = struct.unpack_from("!H", plain, 2)[0]
            seg = plain[:tot]
            assert len(seg) == 52 + min(segment, len(payload) - segment * i)
            assert csum(seg[:20]) == 0, "IPv4 header checksum"
            assert struct.unpack_from("!H", seg, 4)[0] == 7 + i  # IP id per segment
            tcp = seg[20:]
            assert csum(pseudo4(seg[12:16], seg[16:20], 6, len(tcp)) + tcp) == 0
            assert struct.unpack_from("!I", tcp, 4)[0] == 1000 + segment * i
            assert tcp[13] == (0x18 if i == count - 1 else 0x10)  # PSH only on the last
            got += tcp[32:]
        assert got == payload
        assert h.plane.interface_stats().tx_super_packets == 1
        # NEEDS_CSUM without GSO: the plane completes the checksum.
        u = bytearray(udp_packet("10.0.0.1", "10.0.0.2", b"csum me"))
        # The kernel leaves the folded pseudo-header sum in the field (CHECKSUM_PARTIAL).
        u[26:28] = struct.pack("!H", ~csum(pseudo4(u[12:16], u[16:20], 17, len(u) - 20)) & 0xFFFF)
        h.dev.send(struct.pack("<BBHHHH", 1, 0, 0, 0, 20, 6) + bytes(u))
        plain = r.recv()[1][: len(u)]
        assert csum(pseudo4(plain[12:16], plain[16:20], 17, len(u) - 20) + plain[20:]) == 0
        r.close()
    finally:
        h.close()


def test_segments_go_one_by_one_where_the_socket_refuses_udp_gso() -> None:
    """A route that refuses UDP GSO (here the socket, SO_NO_CHECK, which the kernel
    answers EINVAL) turns it off for good; the run it refused still goes, one
    datagram per segment, and nothing counts as a send error."""
    h = Harness(vnet=True)
    try:
        r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
        h.udp.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        assert h.plane.interface_stats().udp_gso == 1
        h.start()
        payload = os.urandom(4 * 536)
        sup = tcp_segment("10.0.0.1", "10.0.0.2", 1000, payload, flags=0x18)
        h.dev.send(struct.pack("<BBHHHH", 1, 1, 40, 536, 20, 16) + sup)  # NEEDS_CSUM, TCPV4
        got = [r.recv() for _ in range(4)]
        assert [counter for counter, _, _ in got] == [0, 1, 2, 3]
        assert b"".join(plain[40 : 40 + 536] for _, plain, _ in got) == payload
        st = h.plane.interface_stats()
        assert st.udp_gso == 0 and st.tx_send_errors == 0
        r.close()
    finally:
        h.close()


def test_uso_super_packet_is_split() -> None:
    """A UDP GSO super-packet (what TUN gives with USO, from a UDP_SEGMENT sender)
    becomes one datagram per gso_size, each with its own length and checksum."""
    h = Harness(vnet=True)
    try:
        r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
        h.start()
        chunks = [bytes([i]) * 1000 for i in range(4)] + [b"tail"]
        sup = bytearray(udp_packet("10.0.0.1", "10.0.0.2", b"".join(chunks)))
        sup[26:28] = b"\0\0"  # the plane computes each datagram's checksum
        h.dev.send(struct.pack("<BBHHHH", 1, VIRTIO_NET_HDR_GSO_UDP_L4, 28, 1000, 20, 6) + sup)
        for i, chunk in enumerate(chunks):
            plain = r.recv()[1]
            dgram = plain[: struct.unpack_from("!H", plain, 2)[0]]
            assert len(dgram) == 28 + len(chunk) and dgram[28:] == chunk
            assert csum(dgram[:20]) == 0, "IPv4 header checksum"
            assert struct.unpack_from("!H", dgram, 4)[0] == 7 + i  # IP id per datagram
            udp = dgram[20:]
            assert struct.unpack_from("!HH", udp, 2)[1] == len(udp)
            assert csum(pseudo4(dgram[12:16], dgram[16:20], 17, len(udp)) + udp) == 0
        assert h.plane.interface_stats().tx_super_packets == 1
        r.close()
    finally:
        h.close()


def test_gro_coalesces_in_order_tcp() -> None:
    """Segments of one flow arriving in one batch are written as one super-packet."""
    h = Harness(vnet=True)
    try:
        r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
        chunks = [os.urandom(1000) for _ in range(4)]
        for i, c in enumerate(chunks):
            r.send(
                tcp_segment(
                    "10.0.0.2", "10.0.0.1", 5000 + 1000 * i, c, flags=0x18 if i == 3 else 0x10
                )
            )
        other = udp_packet("10.0.0.2", "10.0.0.1", b"not tcp")
        r.send(other)
        h.start()  # everything is queued: one recvmmsg batch
        data = h.read_dev()
        flags, gso_type, hdr_len, gso_size, cs_start, cs_off = struct.unpack_from("<BBHHHH", data)
        assert (flags, gso_type, hdr_len, gso_size, cs_start, cs_off) == (1, 1, 40, 1000, 20, 16)
        pkt = data[10:]
        assert struct.unpack_from("!H", pkt, 2)[0] == len(pkt) == 40 + 4000
        assert csum(pkt[:20]) == 0
        assert pkt[40:] == b"".join(chunks)
        assert pkt[20 + 13] == 0x18  # PSH carried over from the last segment
        partial = struct.unpack_from("!H", pkt, 36)[0]
        assert partial == (~csum(pseudo4(pkt[12:16], pkt[16:20], 6, 4020)) & 0xFFFF)
        data = h.read_dev()
        assert data[:10] == bytes(10) and data[10:] == other
        assert h.plane.interface_stats().rx_coalesced == 1
        r.close()
    finally:
        h.close()


ME, FAR = bytes.fromhex("020000000001"), bytes.fromhex("0200000000a1")


@pytest.mark.parametrize(
    "tags", [vlan_tag(10), vlan_tag(20, QINQ) + vlan_tag(10)], ids=["802.1Q", "QinQ"]
)
def test_tagged_tso_super_frame_is_split(tags: bytes) -> None:
    """tap: a TCP super-frame on a VLAN (TAP hands them over with TSO, tag in the
    data) becomes segments on the same VLAN."""
    h = Harness(tap=True, vnet=True)
    try:
        r = Remote(h, 1, 0x1111, 0x2222, tap=True)
        h.start()
        payload, gso_size, l3 = os.urandom(4000), 536, 14 + len(tags)
        ip = partial_tcp_csum(tcp_segment("10.0.0.1", "10.0.0.2", 1000, payload, flags=0x18))
        sup = ether(FAR, ME, ip, tags)
        h.dev.send(virtio_net_hdr(VIRTIO_NET_HDR_GSO_TCPV4, l3 + 40, gso_size, l3 + 20) + sup)
        got = b""
        for i in range(-(-len(payload) // gso_size)):
            frame = r.recv()[1]
            assert frame[:l3] == sup[:l3]  # MACs, tags and ethertype
            seg = frame[l3:]
            assert len(seg) == 40 + min(gso_size, len(payload) - gso_size * i)
            assert struct.unpack_from("!H", seg, 2)[0] == len(seg)
            assert csum(seg[:20]) == 0, "IPv4 header checksum"
            assert csum(pseudo4(seg[12:16], seg[16:20], 6, len(seg) - 20) + seg[20:]) == 0
            assert struct.unpack_from("!I", seg, 24)[0] == 1000 + gso_size * i
            got += seg[40:]
        assert got == payload
        stats = h.plane.interface_stats()
        assert (stats.tx_super_packets, stats.tx_malformed) == (1, 0)
        r.close()
    finally:
        h.close()


def test_an_oversized_frame_python_does_not_answer_goes_on_segmented() -> None:
    """tap: a super-frame whose segments exceed the MTU goes up for an ICMP answer
    with its virtio header; one that gets none (to a group address, which no
    router answers) is handed back and leaves segmented, checksums complete."""
    h = Harness(tap=True, vnet=True, mtu=1420)
    try:
        r = Remote(h, 1, 0x1111, 0x2222, tap=True)
        h.start()
        payload, gso_size = os.urandom(3000), 1448  # 40 + 1448 > 1420: too big
        ip = partial_tcp_csum(tcp_segment("10.0.0.1", "10.0.0.2", 1000, payload, flags=0x18))
        read = virtio_net_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 14 + 40, gso_size, 14 + 20)
        read += ether(bytes.fromhex("01005e000001"), ME, ip)  # a multicast destination
        h.dev.send(read)
        up = h.upcall()
        assert up.kind is dp.UpcallKind.TOO_BIG and up.payload == read
        h.plane.transmit_frame(up.payload)
        got = b""
        while len(got) < len(payload):
            seg = r.recv()[1][14:]
            seg = seg[: struct.unpack_from("!H", seg, 2)[0]]
            assert csum(seg[:20]) == 0, "IPv4 header checksum"
            assert csum(pseudo4(seg[12:16], seg[16:20], 6, len(seg) - 20) + seg[20:]) == 0
            assert struct.unpack_from("!I", seg, 24)[0] == 1000 + len(got)
            got += seg[40:]
        assert got == payload
        h.no_upcall()
        r.close()
    finally:
        h.close()


def test_gro_coalesces_tagged_frames_per_vlan() -> None:
    """tap: one TCP flow's segments coalesce on their VLAN; the same addresses and
    ports on another VLAN are another flow, even interleaved."""
    h = Harness(tap=True, vnet=True)
    try:
        r = Remote(h, 1, 0x1111, 0x2222, tap=True)
        chunks = {
            10: [os.urandom(1000) for _ in range(3)],
            20: [os.urandom(1000) for _ in range(3)],
        }
        for i in range(3):
            for vid, seq in ((10, 5000), (20, 9000)):
                ip = tcp_segment("10.0.0.2", "10.0.0.1", seq + 1000 * i, chunks[vid][i])
                r.send(ether(ME, FAR, ip, vlan_tag(vid)))
        h.start()  # everything is queued: one recvmmsg batch
        for vid, seq in ((10, 5000), (20, 9000)):
            data = h.read_dev()
            assert struct.unpack_from("<BBHHHH", data) == (1, 1, 18 + 40, 1000, 18 + 20, 16)
            frame = data[10:]
            assert frame[:18] == ME + FAR + vlan_tag(vid) + b"\x08\x00"
            pkt = frame[18:]
            assert struct.unpack_from("!H", pkt, 2)[0] == len(pkt) == 40 + 3000
            assert csum(pkt[:20]) == 0
            assert struct.unpack_from("!I", pkt, 24)[0] == seq
            assert pkt[40:] == b"".join(chunks[vid])
        h.no_dev()
        assert h.plane.interface_stats().rx_coalesced == 2
        r.close()
    finally:
        h.close()


def test_ipv6_underlay_endpoint(h: Harness) -> None:
    """An IPv6 endpoint on the dual-stack socket, both directions."""
    r = Remote(h, 1, 0x1111, 0x2222, ("fd00::2/128",))
    r.sock.close()
    r.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    r.sock.bind(("::1", 0))
    h.plane.set_endpoint(1, r.sock.getsockname()[:2])
    h.start()
    a2, a1 = (
        socket.inet_pton(socket.AF_INET6, "fd00::2"),
        socket.inet_pton(socket.AF_INET6, "fd00::1"),
    )
    # IPv6, payload length 4, next header 59 (none), hop limit 64.
    pkt = bytes([0x60, 0, 0, 0, 0, 4, 59, 64]) + a2 + a1 + b"abcd"
    r.sock.sendto(r.seal(pkt), ("::1", h.port))
    assert h.read_dev() == pkt
    assert h.plane.stats(1).endpoint == r.sock.getsockname()[:2]
    h.dev.send(pkt[:8] + a1 + a2 + b"abcd")  # reply to fd00::2
    assert r.recv()[1].startswith(pkt[:8])
    r.close()


# In a namespace of its own: one process gives C a link-local endpoint, has its
# interface recreated, and gives it again.
RECREATED_SCOPE = r"""
import socket, struct, subprocess, sys
from tunnel.planes import dp
name = sys.argv[1]
for _ in range(2):
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", name + "p"], check=True)
    raw = dp._sockaddr(("fe80::1%" + name, 51820))
    print(socket.if_nametoindex(name), struct.unpack_from("=I", raw, 24)[0])
    subprocess.run(["ip", "link", "del", name], check=True)
"""


def test_a_recreated_interface_scopes_a_link_local_endpoint_by_its_new_index(bed) -> None:
    """fe80::1%NAME goes to C with NAME's index as it is now, not as it was."""
    done = subprocess.run(
        bed.a.argv(sys.executable, "-c", RECREATED_SCOPE, "pvscope0"),
        capture_output=True,
        text=True,
        env=pyvpn_env(),
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    (first, first_scope), (second, second_scope) = (
        map(int, line.split()) for line in done.stdout.splitlines()
    )
    assert first != second  # the kernel gave the new interface a new index
    assert (first_scope, second_scope) == (first, second)
