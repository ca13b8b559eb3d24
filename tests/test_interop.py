"""pyvpn against a real WireGuard peer (wireguard-go from Debian: sid's build,
trixie's and bookworm's) in namespaces: the protocol is WireGuard's, so handshakes and
traffic work in both directions."""

import json

import pytest

from tunnel.lab.testbed import (
    INNER_A,
    INNER_B,
    UNDERLAY_A,
    UNDERLAY_B,
    WgPeer,
    device_name,
    render_config,
    start_pyvpn,
    start_wireguard_go,
    wait_reachable,
)
from tunnel.protocol import keys

from .conftest import pyvpn
from .traffic import tcp_transfer


@pytest.mark.parametrize("build", ["current", "trixie", "bookworm"])
@pytest.mark.parametrize("initiator", ["pyvpn", "wireguard-go"])
def test_pyvpn_and_wireguard_go_carry_traffic_both_ways(bed, tmp_path, initiator, datapath, build):
    """Against every wireguard-go build the bench measures: sid's (the newest),
    trixie's, and bookworm's, from before the 2023 offloads."""
    ours, theirs, psk = (
        keys.generate_private_key(),
        keys.generate_private_key(),
        keys.generate_preshared_key(),
    )
    name = device_name("pvwg", "a")
    config = tmp_path / "a.toml"
    # Only the initiator knows where the other is; the answering side learns it.
    config.write_text(
        render_config(
            {
                "name": name,
                "private_key": keys.encode(ours),
                "listen_port": 51820,
                "address": [f"{INNER_A}/24"],
                "datapath": datapath,
            },
            [
                {
                    "public_key": keys.encode(keys.public_key(theirs)),
                    "preshared_key": keys.encode(psk),
                    "allowed_ips": [f"{INNER_B}/32"],
                    "endpoint": f"{UNDERLAY_B}:51820" if initiator == "pyvpn" else None,
                }
            ],
        )
    )
    wg_peer = WgPeer(
        keys.public_key(ours),
        [f"{INNER_A}/32"],
        f"{UNDERLAY_A}:51820" if initiator == "wireguard-go" else None,
        preshared_key=psk,
    )
    with (
        start_wireguard_go(
            bed.b,
            device_name("pvwg", "b"),
            theirs,
            51820,
            [wg_peer],
            [f"{INNER_B}/24"],
            build=build,
        ) as wg,
        start_pyvpn(bed.a, config),
    ):
        first, second = (bed.a, bed.b) if initiator == "pyvpn" else (bed.b, bed.a)
        wait_reachable(first, INNER_B if first is bed.a else INNER_A)
        wait_reachable(second, INNER_A if second is bed.b else INNER_B)
        sent, received = tcp_transfer(bed.b, bed.a, INNER_B, 2 << 20)
        assert sent == received
        sent, received = tcp_transfer(bed.a, bed.b, INNER_A, 2 << 20)
        assert sent == received
        wg_dump = bed.b.run("wg", "show", wg.name, "dump").stdout.splitlines()[1].split("\t")
        assert wg_dump[0] == keys.encode(keys.public_key(ours))
        assert wg_dump[2] == f"{UNDERLAY_A}:51820" and int(wg_dump[4]) > 0  # endpoint, handshake
        status = json.loads(pyvpn("show", name, "--json").stdout)
        assert status["peers"][0]["endpoint"] == f"{UNDERLAY_B}:51820"
        assert status["peers"][0]["rx_bytes"] > 2 << 20
        assert status["datapath"] == datapath
