"""The test-network harness: namespaces come up, talk, and leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator

import pytest

from tunnel.control import config
from tunnel.lab.testbed import (
    IFNAMSIZ,
    INNER_A,
    INNER_B,
    WG_RUN_DIR,
    CommandError,
    Namespace,
    TunnelStartError,
    WgPeer,
    device_name,
    host_problem,
    start_pyvpn,
    start_wireguard_go,
    wait_reachable,
    write_pair_configs,
)
from tunnel.protocol import keys

from ..bed import Testbed, cleanup_stale, leftovers
from ..conftest import needs

needs_wireguard_go = needs(host_problem(("wireguard-go", "wg")))
pytestmark = [needs(host_problem(("ip", "ping"))), pytest.mark.netns]


@pytest.fixture
def tb() -> Iterator[Testbed]:
    with Testbed() as testbed:
        yield testbed
    assert leftovers() == []


def _ping(ns: Namespace, addr: str) -> subprocess.CompletedProcess[str]:
    return ns.run("ping", "-n", "-c", "1", "-W", "2", addr, check=False)


def test_a_pings_b_over_the_veth_v4_and_v6(tb: Testbed) -> None:
    assert _ping(tb.a, tb.b_addr).returncode == 0
    assert _ping(tb.a, tb.b_addr6).returncode == 0
    assert _ping(tb.b, tb.a_addr6).returncode == 0
    assert tb.a.has_link(tb.a_veth) and tb.b.has_link(tb.b_veth)


def test_names_are_unique_per_process_and_testbed(tb: Testbed) -> None:
    with Testbed() as other:
        names = {ns.name for ns in (tb.a, tb.b, other.a, other.b)}
        assert len(names) == 4
        assert all(f"-{os.getpid()}-" in name for name in names)


def test_exit_removes_namespaces_devices_and_processes() -> None:
    with Testbed() as testbed:
        names = [ns.name for ns in testbed.namespaces]
        sleeper = testbed.b.popen("sleep", "60")
        assert leftovers()  # the namespaces and the sleeper count while it runs
    assert sleeper.poll() is not None
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listing for name in names)
    assert leftovers() == []


def test_exit_tears_down_on_error() -> None:
    with pytest.raises(RuntimeError, match="boom"), Testbed() as testbed:
        testbed.a.popen("sleep", "60")
        raise RuntimeError("boom")
    assert leftovers() == []


def test_a_bed_that_leaves_a_process_or_socket_of_ours_behind_fails() -> None:
    """What a test made outside the namespaces (a process of ours, a UAPI socket
    named with our pid) is not torn down with them: the bed says so at exit."""
    socket_file = WG_RUN_DIR / f"pvleft{os.getpid()}a.sock"
    with contextlib.ExitStack() as cleanup:
        with pytest.raises(AssertionError) as info, Testbed():
            sleeper = subprocess.Popen(["sleep", "60"])
            cleanup.callback(sleeper.wait)
            cleanup.callback(sleeper.kill)
            WG_RUN_DIR.mkdir(parents=True, exist_ok=True)
            socket_file.touch()
            cleanup.callback(socket_file.unlink)
        assert f"child process {sleeper.pid}" in str(info.value)
        assert f"socket {socket_file}" in str(info.value)
        assert "netns" not in str(info.value)  # the bed's own went with it


def test_command_error_names_command_and_stderr(tb: Testbed) -> None:
    with pytest.raises(CommandError) as info:
        tb.a.run("ip", "link", "show", "no-such-dev")
    assert "ip link show no-such-dev" in str(info.value)
    assert "does not exist" in str(info.value)


def test_more_namespaces_on_a_bridge(tb: Testbed) -> None:
    """A hub namespace with a bridge and two hosts plugged in: the tap-test layout."""
    hub, h1, h2 = tb.add_namespace("hub"), tb.add_namespace("h1"), tb.add_namespace("h2")
    bridge = tb.add_bridge(hub, "br0")
    tb.link(h1, hub, ["198.18.7.1/24", "fd18:7::1/64"], bridge2=bridge)
    tb.link(h2, hub, ["198.18.7.2/24", "fd18:7::2/64"], bridge2=bridge)
    wait_reachable(h1, "198.18.7.2", timeout=5)
    assert _ping(h1, "fd18:7::2").returncode == 0
    assert "master br0" in hub.run("ip", "link", "show", "to-h1").stdout


def test_testbed_with_n_namespaces() -> None:
    with Testbed(n=4) as testbed:
        assert len(testbed.namespaces) == 4
        assert all(ns.exists() for ns in testbed.namespaces)
    assert leftovers() == []


def test_cleanup_stale_removes_dead_runs_only() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # A prefix of its own, so the other workers' sweeps at start leave these alone.
    stale = Namespace(f"pvstale-{dead.pid}-0a").create()
    mine = Namespace(f"pvstale-{os.getpid()}-check").create()
    try:
        removed = cleanup_stale("pvstale")
        assert stale.name in removed and not stale.exists()
        assert mine.exists()
    finally:
        stale.delete()
        mine.delete()


def test_pair_configs_match_each_other(tmp_path) -> None:
    path_a, path_b = write_pair_configs(tmp_path, "tap", "python", mtu=1400)
    a, b = (tomllib.loads(p.read_text()) for p in (path_a, path_b))
    for me, other in ((a, b), (b, a)):
        private = keys.decode(other["interface"]["private_key"])
        assert me["peer"][0]["public_key"] == keys.encode(keys.public_key(private))
        assert len(me["interface"]["name"]) <= IFNAMSIZ
        assert me["interface"]["mode"] == "tap" and me["interface"]["datapath"] == "python"
        assert me["interface"]["mtu"] == 1400
    assert a["interface"]["address"] == [f"{INNER_A}/24", "fd10::1/64"]
    assert a["peer"][0]["endpoint"] == "198.18.0.2:51820"
    assert oct(path_a.stat().st_mode & 0o777) == "0o600"


def test_pair_config_overrides_set_and_remove_keys(tmp_path) -> None:
    path_a, _ = write_pair_configs(
        tmp_path, interface_a={"listen_port": 4000}, peer_a={"endpoint": None}
    )
    a = tomllib.loads(path_a.read_text())
    assert a["interface"]["listen_port"] == 4000
    assert "endpoint" not in a["peer"][0]


def test_pair_configs_are_valid_pyvpn_configs(tmp_path) -> None:
    for mode in ("tun", "tap"):
        for path in write_pair_configs(tmp_path, mode, persistent_keepalive=5):
            loaded = config.load(str(path))
            assert loaded.interface.mode == mode


def test_device_names_fit_ifnamsiz() -> None:
    assert len(device_name("pvtap", "b", pid=4194304)) <= IFNAMSIZ
    with pytest.raises(ValueError):
        device_name("much-too-long", "a", pid=4194304)


@needs_wireguard_go
def test_wireguard_go_pair_passes_traffic(tb: Testbed) -> None:
    ka, kb = keys.generate_private_key(), keys.generate_private_key()
    a = start_wireguard_go(
        tb.a, device_name("wg", "a"), ka, 51820,
        [WgPeer(keys.public_key(kb), [f"{INNER_B}/32"], f"{tb.b_addr}:51820")],
        [f"{INNER_A}/24"],
    )  # fmt: skip
    start_wireguard_go(
        tb.b, device_name("wg", "b"), kb, 51820,
        [WgPeer(keys.public_key(ka), [f"{INNER_A}/32"], f"{tb.a_addr}:51820")],
        [f"{INNER_B}/24"],
    )  # fmt: skip
    wait_reachable(tb.a, INNER_B)
    assert "latest handshake" in tb.a.run("wg", "show", a.name).stdout
    a.stop()
    assert not tb.a.has_link(a.name)


@needs_wireguard_go
def test_pyvpn_and_wireguard_go_interoperate(tb: Testbed, tmp_path) -> None:
    path_a, _ = write_pair_configs(tmp_path, "tun", "python")
    a_conf = tomllib.loads(path_a.read_text())
    kb = keys.generate_private_key()
    # B is wireguard-go holding the key A's config expects for its peer.
    a_conf_path = tmp_path / "a-vs-wg.toml"
    a_text = path_a.read_text().replace(
        a_conf["peer"][0]["public_key"], keys.encode(keys.public_key(kb))
    )
    a_conf_path.write_text(a_text)
    start_pyvpn(tb.a, a_conf_path)
    ka = keys.decode(a_conf["interface"]["private_key"])
    start_wireguard_go(
        tb.b, device_name("wg", "b"), kb, 51820,
        [WgPeer(keys.public_key(ka), [f"{INNER_A}/32"], f"{tb.a_addr}:51820")],
        [f"{INNER_B}/24"],
    )  # fmt: skip
    wait_reachable(tb.a, INNER_B, timeout=15)


def test_start_pyvpn_failure_carries_its_output(tb: Testbed, tmp_path) -> None:
    path_a, _ = write_pair_configs(tmp_path, interface_a={"private_key": "not-a-key"})
    with pytest.raises(TunnelStartError) as info:
        start_pyvpn(tb.a, path_a)
    assert info.value.returncode == 2
    assert "private_key" in str(info.value).splitlines()[0]
