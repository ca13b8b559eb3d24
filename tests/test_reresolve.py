"""When an endpoint given by name is resolved again (tunnel/reresolve.py): as
wireguard-tools' reresolve-dns.sh decides it. The namespace test is in
test_tunnel_tun.py."""

from tunnel.noise import StaticIdentity
from tunnel.peer import Peer, PeerConfig
from tunnel.reresolve import STALE_AFTER, due

from .test_reconfig import K1, K2


def test_a_name_is_resolved_again_only_while_handshakes_fail():
    identity = StaticIdentity(K1)
    by_address = Peer(identity, PeerConfig(K2, endpoint=("192.0.2.1", 51820)))
    named = Peer(
        identity,
        PeerConfig(K2, endpoint=("192.0.2.1", 51820), endpoint_name=("vpn.test", 51820)),
    )
    assert not due(by_address, 1000.0)
    assert due(named, 1000.0)  # never a handshake
    named.last_handshake_wall = 1000.0 - STALE_AFTER + 1
    assert not due(named, 1000.0)
    named.last_handshake_wall = 1000.0 - STALE_AFTER - 1
    assert due(named, 1000.0)
