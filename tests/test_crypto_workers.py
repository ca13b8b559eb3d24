"""pyvpn tunnels whose native plane seals and opens on crypto workers (`workers`
in the config): real TUN and TAP devices between namespaces, a TCP transfer, a
flood of numbered datagrams that must arrive in the order they were sent, and
the relay between the peers reading every nonce on the wire."""

import json

import pytest

from tunnel.lab.testbed import (
    DEFAULT_PORT,
    INNER_B,
    INNER_B6,
    UNDERLAY_B,
    pyvpn_status,
    start_pyvpn,
    wait_reachable,
    write_pair_configs,
)

from .conftest import NATIVE_MISSING, needs, pyvpn
from .traffic import relay, tcp_transfer, udp_flood

pytestmark = needs(NATIVE_MISSING)

FLOOD = 3000


@pytest.mark.parametrize("crypto_workers", [1, 2, 4])
@pytest.mark.parametrize("mode", ["tun", "tap"])
def test_crypto_workers_keep_each_flow_in_order_and_each_nonce_once(
    bed, tmp_path, mode, crypto_workers
):
    relay_address = f"{UNDERLAY_B}:40000"  # beside B, so that A's MTU is the underlay's
    workers = {"workers": crypto_workers}
    path_a, path_b = write_pair_configs(
        tmp_path, mode, "native", interface_a=workers, interface_b=workers,
        peer_a={"endpoint": relay_address}, peer_b={"endpoint": None},
    )  # fmt: skip
    with (
        relay(bed.b, relay_address, f"{UNDERLAY_B}:{DEFAULT_PORT}", "--nonces") as wire,
        # B first: A's greeting at start is the one handshake that B, without an
        # endpoint, waits for.
        start_pyvpn(bed.b, path_b) as b,
        start_pyvpn(bed.a, path_a) as a,
    ):
        wait_reachable(bed.a, INNER_B)
        assert pyvpn_status(a.name)["crypto_workers"] == crypto_workers
        shown = pyvpn("show", a.name, netns=bed.a.name).stdout
        assert (
            f"data plane: native{f' ({crypto_workers} crypto worker' * bool(crypto_workers)}"
            in shown
        )
        sent, received = tcp_transfer(bed.b, bed.a, INNER_B, 4 << 20)
        assert sent == received
        # Neighbour discovery first (tap): datagrams the kernel queues until it
        # has an answer may go out after the ones sent once it has.
        wait_reachable(bed.a, INNER_B6)
        got = udp_flood(bed.b, bed.a, INNER_B6, FLOOD)
        assert got == sorted(set(got)), "datagrams reordered or doubled"
        assert len(got) > FLOOD // 2, f"{len(got)} of {FLOOD} arrived"
        for peer in (a, b):
            assert pyvpn_status(peer.name)["peers"][0]["drops"].get("replay_or_forged", 0) == 0
        wire.terminate()
        nonces = json.loads(wire.communicate(timeout=10)[0])
    assert nonces["transport"] > FLOOD // 2 and nonces["reused"] == 0, nonces
