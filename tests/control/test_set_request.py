"""A set request as one transaction (control/set_request.py), without a
namespace: what the routes are foreseen to be is what the core then holds, and a
change the native plane refuses partway leaves the core and C as they were, the
session carrying traffic. The namespace side (routes, sockets, the oversize
line) is in test_uapi_set.py."""

import asyncio
import errno
import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from tunnel.control import uapi
from tunnel.control.running import Tunnel
from tunnel.control.set_request import set_request
from tunnel.core.interface import Interface
from tunnel.core.reconfig import Change, IPEdit, PeerChange, apply, networks_after
from tunnel.host.full_tunnel import FullTunnel
from tunnel.planes.native import NativeShell
from tunnel.protocol import keys
from tunnel.protocol.peer_config import PeerConfig

from ..native_session import confirmed_session, sends
from ..packets import ipv4_packet

OWN = bytes(range(32))
OTHERS = [keys.public_key(bytes([i]) * 32) for i in (3, 4, 5)]
NETWORKS = [ipaddress.ip_network(n) for n in ("10.1.0.0/24", "10.1.0.0/25", "fd00::/64")]

sections = st.builds(
    PeerChange,
    st.sampled_from([*OTHERS, keys.public_key(OWN)]),
    remove=st.booleans(),
    update_only=st.booleans(),
    replace_allowed_ips=st.booleans(),
    allowed_ips=st.lists(st.builds(IPEdit, st.sampled_from(NETWORKS), st.booleans()), max_size=4),
)
requests = st.builds(
    Change,
    private_key=st.sampled_from([None, OWN, bytes([3]) * 32, bytes(32)]),
    replace_peers=st.booleans(),
    peers=st.lists(sections, max_size=5),
)


@given(requests)
def test_the_routes_foreseen_are_the_routes_the_core_then_has(change):
    """The kernel's routes go in before the core takes a change: networks_after
    must foresee exactly what apply makes, whatever the request holds (our own
    key, a new private key that is a peer's, peers removed and added again)."""
    iface = Interface(bytes([9]) * 32)
    iface.add_peer(PeerConfig(OTHERS[0], allowed_ips=[NETWORKS[0], NETWORKS[2]]))
    iface.add_peer(PeerConfig(OTHERS[1], allowed_ips=[NETWORKS[1]]))
    foreseen = networks_after(iface, change)
    unchanged = iface.routes.networks()
    assert networks_after(iface, change) == foreseen and iface.routes.networks() == unchanged
    apply(iface, change, 0.0)
    assert iface.routes.networks() == foreseen


def running(shell: NativeShell) -> Tunnel:
    """The tunnel a's shell serves, as the daemon makes it; no routes (table off)."""
    return Tunnel(
        name="pv0",
        iface=shell.iface,
        plane=shell,
        listen_port=shell.sock.getsockname()[1],
        table="off",
        full_tunnel=FullTunnel("pv0", shell.sock, []),
    )


def test_a_change_the_native_plane_refuses_partway_changes_nothing(monkeypatch):
    """Two new peers, the first taking b's network: C takes the first and refuses
    the second (out of memory). The reply says so, the core is as it was, and C
    again routes b's network to b, on the session it had."""
    with confirmed_session() as s:
        shell, iface = s.shell, s.a.iface
        target = running(shell)
        port = target.listen_port
        before = uapi.get_response(iface, port)
        first, second = (keys.public_key(keys.generate_private_key()) for _ in range(2))
        args = [f"public_key={first.hex()}", "allowed_ip=10.0.0.2/32", f"public_key={second.hex()}"]
        calls = []
        add_peer = shell.plane.add_peer

        def out_of_memory_at_the_second(peer_id: int) -> None:
            calls.append(peer_id)
            if len(calls) == 2:
                raise OSError(errno.ENOMEM, "add_peer: Cannot allocate memory")
            add_peer(peer_id)

        monkeypatch.setattr(shell.plane, "add_peer", out_of_memory_at_the_second)
        reply = asyncio.run(set_request(target, args))
        assert reply == f"errno={-errno.ENOMEM}\n\n"
        assert len(calls) == 2  # C did take the first peer before it refused
        assert uapi.get_response(iface, port) == before
        assert list(shell.ids) == list(iface.peers.values())

        # b's next packet from 10.0.0.2 is b's again in C: written into a's device.
        packet = ipv4_packet("10.0.0.2", "10.0.0.1", b"still b's")
        for send in sends(s.b.iface.send_packet(packet, s.net.now)):
            s.udp_b.sendto(send.data, s.a.address)
        assert s.dev.recv(2048).endswith(packet)


def test_a_new_listen_port_is_the_one_the_new_socket_got_and_the_session_carries_on():
    """listen_port=0 asks the kernel for a port: the tunnel then reports the port
    its new socket is bound to, the old port is given up, and b's next packet,
    sent to the new port, reaches a's device on the session it had."""
    with confirmed_session() as s:
        tunnel = running(s.shell)
        old = tunnel.listen_port
        assert asyncio.run(set_request(tunnel, ["listen_port=0"])) == "errno=0\n\n"
        new = tunnel.listen_port
        assert new not in (0, old)
        assert s.shell.sock.getsockname()[1] == new  # what it reports is where it listens
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taker:
            taker.bind(("127.0.0.1", old))  # free again

        packet = ipv4_packet("10.0.0.2", "10.0.0.1", b"to the new port")
        for send in sends(s.b.iface.send_packet(packet, s.net.now)):
            s.udp_b.sendto(send.data, ("127.0.0.1", new))
        assert s.dev.recv(2048).endswith(packet)
