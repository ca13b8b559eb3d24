"""The native plane with crypto workers beside its I/O worker (native/pipeline.c):
what leaves it is what one thread would send, in the same order, each counter
once, and no worker keeps a freed keypair's key. The remote peer is
test_native_plane.py's, which checks every byte with `cryptography`."""

from __future__ import annotations

import errno
import socket
import struct
import threading

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunnel.planes import dp

from ..conftest import NATIVE_MISSING, needs
from ..packets import VIRTIO_NET_HDR_GSO_TCPV4, tcp_segment, udp_packet, virtio_net_hdr
from ..waiting import wait_until
from .native_harness import Harness, Remote

pytestmark = needs(NATIVE_MISSING)

SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>
WORKERS = [1, 2, 4]
SEGMENT = 1368  # TSO segments of 22 whole ChaCha20 blocks with their headers: not cut smaller
PER_READ = 44  # segments in each super-packet: three slices of the ring and some


def start(h: Harness, crypto_workers: int) -> None:
    h.plane.start(1, crypto_workers)


def remote(h: Harness, peer_id: int, index: int, network: str) -> Remote:
    """A remote peer whose socket holds a whole flood."""
    r = Remote(h, peer_id, index, index + 1, (network,))
    r.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    return r


def super_packet(dst: str, seq: int) -> bytes:
    """A TSO read of PER_READ segments from 10.0.0.1 to dst, starting at seq."""
    sup = tcp_segment("10.0.0.1", dst, seq, bytes(PER_READ * SEGMENT))
    return virtio_net_hdr(VIRTIO_NET_HDR_GSO_TCPV4, 40, SEGMENT, 20) + sup


def segments(r: Remote, n: int) -> list[tuple[int, int]]:
    """(counter, TCP sequence number) of the next n messages, as they arrive."""
    got = []
    for _ in range(n):
        counter, plain, _ = r.recv()
        got.append((counter, struct.unpack_from("!I", plain, 24)[0]))
    return got


@pytest.mark.parametrize("crypto_workers", WORKERS)
def test_each_peer_gets_its_segments_in_order_each_counter_once(crypto_workers: int) -> None:
    """Super-packets for two peers, interleaved: every segment is sealed by
    whichever worker, yet each peer receives its own in the order they were
    read, under the counters 0, 1, 2, ... (a nonce is never used twice)."""
    h = Harness(vnet=True)
    try:
        peers = [remote(h, 1, 0x100, "10.0.0.2/32"), remote(h, 2, 0x200, "10.0.0.3/32")]
        start(h, crypto_workers)
        assert h.plane.interface_stats().crypto_workers == crypto_workers
        reads = 12
        for i in range(reads):
            for dst in ("10.0.0.2", "10.0.0.3"):
                h.dev.send(super_packet(dst, i * PER_READ * SEGMENT))
        for r in peers:
            got = segments(r, reads * PER_READ)
            assert [c for c, _ in got] == list(range(reads * PER_READ))
            assert [seq for _, seq in got] == [k * SEGMENT for k in range(reads * PER_READ)]
            r.nothing()
            r.close()
    finally:
        h.close()


@pytest.mark.parametrize("crypto_workers", WORKERS)
def test_received_messages_reach_the_device_in_order(crypto_workers: int) -> None:
    """With crypto workers running, datagrams in batches shorter than a slice
    (opened by the I/O worker) reach the device in the order they came, and the
    replay window and the tag, checked as the ring is released, drop and count
    a replay and a forgery."""
    h = Harness()
    try:
        r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
        start(h, crypto_workers)
        sent = [udp_packet("10.0.0.2", "10.0.0.1", i.to_bytes(4, "big")) for i in range(400)]
        assert r.delivered(sent) == sent
        r.send(sent[0], counter=0)  # a replay
        forged = bytearray(r.seal(sent[1]))
        forged[-1] ^= 1
        r.sock.sendto(bytes(forged), ("127.0.0.1", h.port))
        h.no_dev()
        stats = h.plane.stats(1)
        assert (stats.drop_replay, stats.drop_bad_tag) == (1, 1)
        r.close()
    finally:
        h.close()


@pytest.mark.parametrize("crypto_workers", WORKERS)
def test_segments_opened_by_workers_coalesce_in_the_order_they_came(crypto_workers: int) -> None:
    """40 segments of one TCP flow queued before the plane starts: its first
    batch (32 datagrams, two slices for the workers) and its second come out
    as super-packets whose payload is the stream in order."""
    h = Harness(vnet=True)
    try:
        r = Remote(h, 1, 0x1111, 0x2222, ("10.0.0.2/32",))
        chunks = [i.to_bytes(2, "big") * 500 for i in range(40)]
        for i, chunk in enumerate(chunks):
            r.send(tcp_segment("10.0.0.2", "10.0.0.1", 5000 + 1000 * i, chunk))
        start(h, crypto_workers)
        payload = b""
        while len(payload) < len(b"".join(chunks)):
            payload += h.read_dev()[10 + 40 :]  # behind its virtio, IP and TCP headers
        assert payload == b"".join(chunks)
        assert h.plane.interface_stats().rx_coalesced >= 1
        r.close()
    finally:
        h.close()


def test_a_freed_keypair_leaves_every_crypto_worker_after_rekeys_under_load() -> None:
    """Sessions replaced while a flood is being sealed: every message on the wire
    opens under the key its receiver index names, no (index, counter) comes
    twice, and once the keypairs are gone no worker holds a key."""
    h = Harness(vnet=True)
    try:
        r = remote(h, 1, 0x100, "10.0.0.2/32")
        start(h, 4)
        keys = {r.remote_index: r.to_remote}
        done = threading.Event()

        def flood() -> None:
            for i in range(30):
                h.dev.send(super_packet("10.0.0.2", i * PER_READ * SEGMENT))
            done.set()

        writer = threading.Thread(target=flood)
        writer.start()
        seen = set()
        for rekey in range(1, 6):
            for _ in range(2 * PER_READ):
                index, counter = received(r, keys)
                assert (index, counter) not in seen
                seen.add((index, counter))
            r.rekey(0x100 + 2 * rekey, 0x101 + 2 * rekey)
            keys[r.remote_index] = r.to_remote
        writer.join()
        while True:
            try:
                seen.add(received(r, keys, timeout=0.5))
            except TimeoutError:
                break
        assert len(seen) == 30 * PER_READ
        assert len({index for index, _ in seen}) > 1  # the rekeys happened under load
        # The last rekey's free made the workers forget their keys if they had
        # sealed everything by then: one more burst on the last keys.
        h.dev.send(super_packet("10.0.0.2", 30 * PER_READ * SEGMENT))
        for _ in range(PER_READ):
            seen.add(received(r, keys))
        assert h.plane.cached_keys() > 0
        for slot in (dp.SLOT_CURRENT, dp.SLOT_PREVIOUS, dp.SLOT_NEXT):
            h.plane.clear_keypair(1, slot)
        wait_until(lambda: h.plane.cached_keys() == 0, "keys dropped by every worker", 3)
        r.close()
    finally:
        h.close()


def received(r: Remote, keys: dict[int, bytes], timeout: float = 2.0) -> tuple[int, int]:
    """(receiver index, counter) of the next message, opened under its index's key."""
    r.sock.settimeout(timeout)
    msg = r.sock.recv(70000)
    index, counter = struct.unpack_from("<IQ", msg, 4)
    nonce = bytes(4) + struct.pack("<Q", counter)
    ChaCha20Poly1305(keys[index]).decrypt(nonce, msg[16:], None)
    return index, counter


def test_the_pipeline_alone_seals_and_opens_what_it_is_given() -> None:
    """`pyvpn bench --pipeline`'s measurement (dp_bench_pipeline): every packet
    sealed and opened again through the ring (an open that failed would mean
    slots mixed up), with 1 and 2 workers; no workers is refused."""
    for workers in (1, 2):
        seconds, cpu_seconds = dp.bench_pipeline(workers, 3000)
        assert seconds > 0 and cpu_seconds > 0
    with pytest.raises(OSError) as refused:
        dp.bench_pipeline(0, 3000)
    assert refused.value.errno == errno.EINVAL
