"""When an endpoint given by name is resolved again (tunnel/control/reresolve.py): as
wireguard-tools' reresolve-dns.sh decides it, but never for an idle peer. The
namespace test is in tests/test_tunnel_tun.py."""

from tunnel.control.reresolve import STALE_AFTER, due
from tunnel.protocol.noise import StaticIdentity
from tunnel.protocol.peer import Peer
from tunnel.protocol.peer_config import PeerConfig

from ..simnet import K1, K2

WALL = 1_700_000_000.0  # wall clock = monotonic + WALL


def test_a_name_is_resolved_again_only_while_handshakes_fail():
    identity = StaticIdentity(K1)
    by_address = Peer(identity, PeerConfig(K2, endpoint=("192.0.2.1", 51820)))
    named = Peer(
        identity,
        PeerConfig(K2, endpoint=("192.0.2.1", 51820), endpoint_name=("vpn.test", 51820)),
    )
    now = 1000.0
    assert not due(by_address, now, WALL)
    assert not due(named, now, WALL)  # never tried: idle
    named.last_initiation_sent = now - 1
    assert due(named, now, WALL)  # tried, never a handshake
    named.last_handshake_wall = WALL + now - STALE_AFTER + 1
    assert not due(named, now, WALL)  # a rekey still within its time
    named.last_handshake_wall = WALL + now - STALE_AFTER - 1
    assert due(named, now, WALL)
    named.last_initiation_sent = now - STALE_AFTER - 2  # before that handshake: idle since
    assert not due(named, now, WALL)
    unresolved = Peer(identity, PeerConfig(K2, endpoint_name=("vpn.test", 51820)))
    assert due(unresolved, now, WALL)  # no address at all yet
