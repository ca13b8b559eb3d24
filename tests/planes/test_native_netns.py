"""The native plane on real TUN devices with offloads, between two namespaces.

Two TUN devices are opened here (IFF_VNET_HDR, so the kernel hands over TSO
super-packets), moved into the test bed's two namespaces and linked by two
NativePlanes talking UDP over 127.0.0.1 in the test's own namespace.  A TCP
transfer of a few MB between the namespaces must arrive byte for byte, and
the planes' counters must show that super-packets were split on the way out
and coalesced on the way in.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import struct
import subprocess
import sys

import pytest

from tunnel.lab.testbed import Namespace, host_problem, run_command
from tunnel.planes import dp

from ..conftest import NATIVE_MISSING, needs

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_TAP, IFF_NO_PI = 0x0001, 0x0002, 0x1000

pytestmark = [
    needs(NATIVE_MISSING),
    needs(host_problem(("ip",))),
    needs(None if os.path.exists("/dev/net/tun") else "no /dev/net/tun"),
]

SERVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); s.settimeout(30)
print('ready', flush=True)
c, _ = s.accept(); c.settimeout(30)
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b); n += len(b)
print(h.hexdigest(), n, flush=True)
"""

CLIENT = r"""
import socket, sys
data = open(sys.argv[2], 'rb').read()
s = socket.create_connection((sys.argv[1], 5201), timeout=30)
s.sendall(data); s.close()
"""


def open_tun(name: str, tap: bool = False) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    flags = (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI | dp.device_open_flags(tap=tap)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    return fd


@pytest.fixture(params=["tun", "tap"])
def tunnel_pair(request, bed, tmp_path):
    """The test bed's two namespaces, each holding a device of ours; their veth
    stays unused, as the planes talk over loopback out here."""
    tap = request.param == "tap"
    tag = f"{os.getpid() % 100000}{request.param[1]}"
    spaces = [bed.a, bed.b]
    devs = [f"pvn{tag}a", f"pvn{tag}b"]
    fds: list[int] = []
    socks: list[socket.socket] = []
    ctrls: list[socket.socket] = []
    planes: list[dp.NativePlane] = []
    try:
        for i, (ns, dev) in enumerate(zip(spaces, devs, strict=True)):
            fds.append(open_tun(dev, tap))
            run_command(["ip", "link", "set", dev, "netns", ns.name])
            ns.add_address(dev, f"10.201.0.{i + 1}/24")
            ns.add_address(dev, f"fd00:201::{i + 1}/64")
            ns.link_up(dev, 1420)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        keys = [os.urandom(32), os.urandom(32)]
        for i in range(2):
            other = 1 - i
            ctrl_plane, ctrl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ctrls += [ctrl_plane, ctrl]
            p = dp.NativePlane(
                fds[i], socks[i].fileno(), ctrl_plane.fileno(), tap=tap, vnet_hdr=True, mtu=1420
            )
            planes.append(p)
            p.add_peer(1)
            p.set_endpoint(1, socks[other].getsockname())
            p.set_allowed_ips(1, [f"10.201.0.{other + 1}/32", f"fd00:201::{other + 1}/128"])
            p.install_keypair(1, True, 100 + i, 100 + other, keys[i], keys[other])
            p.start(1)
        yield spaces, planes, tmp_path
    finally:
        for p in planes:
            p.close()
        for fd in fds:
            os.close(fd)
        for s in socks + ctrls:
            s.close()


def transfer(spaces: list[Namespace], tmp_path, address: str, size: int) -> None:
    data = os.urandom(size)
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    server = spaces[1].popen(
        sys.executable, "-c", SERVER, address, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        spaces[0].run(sys.executable, "-c", CLIENT, address, str(src), timeout=60)
        digest, n = server.stdout.readline().split()
        assert int(n) == size
        assert digest == hashlib.sha256(data).hexdigest()
        server.wait(timeout=30)
    finally:
        server.kill()
        server.wait()


def test_tcp_through_real_tun_with_offloads(tunnel_pair) -> None:
    spaces, planes, tmp_path = tunnel_pair
    offload = planes[0].interface_stats().tun_offload
    assert offload & 0x07 == 0x07, "TUNSETOFFLOAD CSUM|TSO4|TSO6 refused"
    transfer(spaces, tmp_path, "10.201.0.2", 6 << 20)
    transfer(spaces, tmp_path, "fd00:201::2", 3 << 20)
    a, b = planes[0].interface_stats(), planes[1].interface_stats()
    assert a.tx_super_packets > 0, "the kernel never handed over a TSO super-packet"
    assert b.rx_coalesced > 0, "no received segments were coalesced"
    assert a.tx_malformed == b.tx_malformed == 0
    assert a.dev_write_errors == b.dev_write_errors == 0
    sa, sb = planes[0].stats(1), planes[1].stats(1)
    assert sa.drop_bad_tag == sb.drop_bad_tag == 0
    assert sb.drop_bad_source == 0 and sb.rx_bytes > 9 << 20
