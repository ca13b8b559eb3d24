"""Real LAN services across a tap tunnel: dnsmasq and radvd on one bridged
segment, a dhclient host on the other. Both ends start at the same moment with
each other's endpoint and a persistent keepalive, and the segments chatter while
they do: the case where both ends initiate at once and each keeps traffic
waiting. The lease must come in on every start."""

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunnel.lab.testbed import (
    Daemon,
    Namespace,
    poll_until,
    pyvpn_env,
    pyvpn_status,
    read_config,
    start_daemon,
    uapi_listening,
    wait_for,
    write_pair_configs,
)
from tunnel.protocol.constants import REKEY_TIMEOUT

from .bed import Testbed

BRIDGE = "br0"
SERVER, SERVER6 = "10.77.0.1", "fd77::1"
POOL = ("10.77.0.100", "10.77.0.150")
STARTS = 5
# After the session: dhclient's next DISCOVER (every 1-2 s here) and DHCP's round trips.
LEASE_WITHIN = 10.0

RADVD_CONF = f"""interface {BRIDGE} {{
    AdvSendAdvert on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 4;
    prefix fd77::/64 {{ AdvOnLink on; AdvAutonomous on; }};
}};
"""
DHCLIENT_CONF = "timeout 60;\nretry 1;\ninitial-interval 1;\nbackoff-cutoff 2;\n"
# dhclient's own script would rewrite the host's resolv.conf: this one only takes
# the address, which is what the test looks for.
DHCLIENT_SCRIPT = """#!/bin/sh
case "$reason" in BOUND|RENEW|REBIND|REBOOT)
    ip addr replace "$new_ip_address/24" dev "$interface" ;;
esac
"""


@pytest.fixture
def lan(bed: Testbed, tmp_path: Path) -> Iterator[tuple[Namespace, str]]:
    """dnsmasq and radvd on br0 in bed.a; a host (namespace, device) on br0 in bed.b."""
    missing = [t for t in ("dnsmasq", "radvd", "dhclient") if shutil.which(t) is None]
    assert not missing, f"not installed (scripts/setup installs them): {missing}"
    server, gateway = bed.a, bed.b
    host = bed.add_namespace()
    bed.add_bridge(server, BRIDGE, [f"{SERVER}/24", f"{SERVER6}/64"])
    bed.add_bridge(gateway, BRIDGE)
    link = bed.link(gateway, host, bridge1=BRIDGE)
    server.sysctl("net.ipv6.conf.all.forwarding", 1)  # radvd advertises only as a router
    (tmp_path / "radvd.conf").write_text(RADVD_CONF)
    services = [
        start_daemon(
            server,
            [
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                f"--interface={BRIDGE}",
                "--bind-interfaces",
                "--dhcp-authoritative",
                f"--dhcp-range={POOL[0]},{POOL[1]},255.255.255.0,1h",
                f"--dhcp-leasefile={tmp_path / 'leases'}",
                "--pid-file=",
            ],
            "dnsmasq",
        ),
        start_daemon(
            server,
            [
                "radvd",
                "--nodaemon",
                "--config",
                str(tmp_path / "radvd.conf"),
                "--pidfile",
                str(tmp_path / "radvd.pid"),
                "--logmethod",
                "stderr",
            ],
            "radvd",
        ),
    ]
    try:
        yield host, link.dev2
    finally:
        for service in services:
            service.stop()


def addresses(ns: Namespace, dev: str) -> list[str]:
    info = json.loads(ns.run("ip", "-j", "addr", "show", dev).stdout)[0]
    return [a["local"] for a in info["addr_info"]]


def leased(address: str) -> bool:
    low, high = (int(x.rsplit(".", 1)[1]) for x in POOL)
    return address.startswith("10.77.0.") and low <= int(address.rsplit(".", 1)[1]) <= high


def start_both(bed: Testbed, paths: tuple[Path, Path]) -> list[Daemon]:
    """Both ends started in the same instant, then waited for together."""
    daemons = []
    for ns, path in zip((bed.a, bed.b), paths, strict=True):
        name = read_config(str(path)).data["interface"]["name"]
        daemons.append(
            start_daemon(
                ns,
                [sys.executable, "-m", "tunnel", "up", str(path)],
                name,
                {**pyvpn_env(), "PYTHONUNBUFFERED": "1"},
            )
        )
    for daemon in daemons:
        wait_for(daemon, lambda d=daemon: uapi_listening(d.name), "its UAPI socket", 20)
    return daemons


def sessions(daemons: list[Daemon]) -> bool:
    """Whether `pyvpn show` gives both ends a latest handshake."""
    return all(pyvpn_status(d.name)["peers"][0]["latest_handshake"] for d in daemons)


def test_dhcp_and_slaac_across_tap_on_every_simultaneous_start(bed, lan, tmp_path, datapath):
    host, dev = lan
    bridged = {"bridge": BRIDGE, "address": None}
    paths = write_pair_configs(
        tmp_path, "tap", datapath, interface_a=bridged, interface_b=bridged,
        persistent_keepalive=5,
    )  # fmt: skip
    (tmp_path / "dhclient.conf").write_text(DHCLIENT_CONF)
    script = tmp_path / "dhclient-script"
    script.write_text(DHCLIENT_SCRIPT)
    script.chmod(0o755)
    failures = []
    for start in range(STARTS):
        host.run("ip", "-4", "addr", "flush", "dev", dev)
        # The host asks before the tunnel exists, so its DISCOVERs are waiting
        # on B's side while both ends come up.
        client = start_daemon(
            host,
            ["dhclient", "-d", "-4", "-1", "-cf", str(tmp_path / "dhclient.conf"),
             "-sf", str(script), "-lf", str(tmp_path / f"lease{start}"),
             "-pf", str(tmp_path / "dhclient.pid"), dev],
            "dhclient",
        )  # fmt: skip
        daemons = start_both(bed, paths)
        try:
            # Crossed initiations complete in a round trip: a start that needs a
            # retransmit (REKEY_TIMEOUT) to make its session has collided.
            if not poll_until(lambda d=daemons: sessions(d), REKEY_TIMEOUT - 0.5):
                failures.append(f"start {start + 1}: no session on both ends in time")
            if not poll_until(lambda: any(map(leased, addresses(host, dev))), LEASE_WITHIN):
                status = [pyvpn_status(d.name)["peers"] for d in daemons]
                failures.append(f"start {start + 1}: no lease in {LEASE_WITHIN:g} s; {status}")
                continue
            # One segment: the server answers the leased host, and radvd's prefix
            # reached it as an address of its own (SLAAC).
            host.run("ping", "-c", "1", "-W", "2", SERVER)
            slaac = poll_until(lambda: any(a.startswith("fd77:") for a in addresses(host, dev)), 10)
            assert slaac, addresses(host, dev)
        finally:
            client.stop()
            for daemon in daemons:
                daemon.stop()
    assert not failures, "\n".join(failures)
