"""`pyvpn mesh`: a hosts file to a config per host. The shapes of a full mesh and of
a hub with spokes, kept keys, the keepalive rule, subnets and errors; then five
namespaces on one switch, meshed from one hosts file, pinging each other through
the tunnels: in tun mode as a full mesh and around a hub, in tap mode as a full
mesh and through a tap hub's bridge."""

import contextlib
import ipaddress
import itertools
import os
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tunnel.control.config import Config, ConfigError, load, parse
from tunnel.control.mesh import configs, parse_hosts
from tunnel.lab.testbed import Namespace, device_name, start_pyvpn
from tunnel.protocol import keys

from ..bed import Testbed, leftovers
from ..conftest import pyvpn

HOSTS = "hosts.toml"


def host(name: str, address: str | list[str], **more: Any) -> dict[str, Any]:
    return {"name": name, "address": address, **more}


def mesh(data: dict[str, Any], kept: dict[str, bytes] | None = None) -> dict[str, Config]:
    """Each host's config as config.parse() reads it, the key inline."""
    out = {}
    for h in configs(parse_hosts(data, HOSTS), kept or {}):
        interface = dict(h.config["interface"])
        assert interface.pop("private_key_file") == f"{h.name}.key"
        interface["private_key"] = keys.encode(h.private_key)
        config = parse({**h.config, "interface": interface}, f"{h.name}.toml")
        assert config.warnings == []
        out[h.name] = config
    return out


def public(config: Config) -> bytes:
    return keys.public_key(config.interface.private_key)


def peers(configs: dict[str, Config], name: str) -> dict[str, Any]:
    """A host's peers by the name of the host each is."""
    by_key = {public(c): n for n, c in configs.items()}
    return {by_key[p.public_key]: p for p in configs[name].peers}


def networks(*texts: str) -> list[Any]:
    return [ipaddress.ip_network(t) for t in texts]


THREE = {
    "host": [
        host("a", "10.1.0.1/24", endpoint="192.0.2.1:51820", subnets=["192.168.1.0/24"]),
        host("b", ["10.1.0.2/24", "fd01::2/64"], endpoint="192.0.2.2:4500"),
        host("c", "10.1.0.3/24"),  # behind a NAT: no endpoint
    ]
}


def test_a_full_mesh_has_every_host_a_peer_of_every_other():
    got = mesh(THREE)
    assert {n: sorted(peers(got, n)) for n in got} == {"a": ["b", "c"], "b": ["a", "c"],
                                                       "c": ["a", "b"]}  # fmt: skip
    # Each peer is sent what it owns: its addresses and its subnets.
    assert peers(got, "b")["a"].allowed_ips == networks("10.1.0.1/32", "192.168.1.0/24")
    assert peers(got, "a")["b"].allowed_ips == networks("10.1.0.2/32", "fd01::2/128")
    assert peers(got, "a")["c"].allowed_ips == networks("10.1.0.3/32")
    assert [str(a) for a in got["b"].interface.addresses] == ["10.1.0.2/24", "fd01::2/64"]
    # A host listens on its endpoint's port; one without an endpoint on 51820.
    assert [got[n].interface.listen_port for n in "abc"] == [51820, 4500, 51820]
    assert peers(got, "c")["b"].endpoint == ("192.0.2.2", 4500)
    assert peers(got, "a")["c"].endpoint is None


def test_only_a_host_without_endpoint_keeps_alive_toward_those_with_one():
    got = mesh(THREE)
    keepalive = {(n, p): peer.persistent_keepalive
                 for n in got for p, peer in peers(got, n).items()}  # fmt: skip
    assert keepalive == {("a", "b"): 0, ("a", "c"): 0, ("b", "a"): 0, ("b", "c"): 0,
                         ("c", "a"): 25, ("c", "b"): 25}  # fmt: skip
    slower = mesh({**THREE, "persistent_keepalive": 60})
    assert peers(slower, "c")["a"].persistent_keepalive == 60
    off = mesh({**THREE, "persistent_keepalive": 0})
    assert peers(off, "c")["a"].persistent_keepalive == 0


def test_a_hub_gives_each_spoke_one_peer_for_the_whole_tunnel_network():
    data = {
        "hub": "a",
        "host": [
            host("a", "10.1.0.1/24", endpoint="[2001:db8::1]:51820"),
            host("b", "10.1.0.2/24", subnets=["192.168.2.0/24"]),
            host("c", ["10.1.0.3/24", "fd01::3/64"], subnets="192.168.3.0/24"),
        ],
    }
    got = mesh(data)
    assert sorted(peers(got, "a")) == ["b", "c"]
    assert list(peers(got, "b")) == list(peers(got, "c")) == ["a"]
    assert peers(got, "a")["b"].allowed_ips == networks("10.1.0.2/32", "192.168.2.0/24")
    # A spoke routes the tunnel network and the other spokes' subnets via the hub.
    assert peers(got, "b")["a"].allowed_ips == networks(
        "10.1.0.0/24", "192.168.3.0/24", "fd01::/64"
    )
    assert peers(got, "c")["a"].allowed_ips == networks("10.1.0.0/24", "192.168.2.0/24",
                                                        "fd01::/64")  # fmt: skip
    assert peers(got, "b")["a"].endpoint == ("2001:db8::1", 51820)
    assert peers(got, "b")["a"].persistent_keepalive == 25
    assert peers(got, "a")["b"].endpoint is None
    forwards = {h.name: h.forwards for h in configs(parse_hosts(data, HOSTS), {})}
    assert forwards == {"a": [4, 6], "b": [4], "c": [4]}


def test_tap_hosts_get_no_allowed_ips_and_a_tap_hub_its_bridge():
    data = {
        "mode": "tap",
        "hub": "a",
        "bridge": "br0",
        "datapath": "python",
        "host": [host("a", [], endpoint="192.0.2.1:51820"), host("b", []), host("c", [])],
    }
    got = mesh(data)
    for config in got.values():
        assert config.interface.mode == "tap" and config.interface.bridge == "br0"
        assert config.interface.datapath == "python" and config.interface.addresses == []
        assert all(p.allowed_ips == [] for p in config.peers)
    assert sorted(peers(got, "a")) == ["b", "c"] and list(peers(got, "b")) == ["a"]
    # A tap mesh without a bridge: each device has its address, every host a peer.
    flat = mesh({"mode": "tap", "host": [host("a", "10.2.0.1/24", endpoint="192.0.2.1:1"),
                                         host("b", "10.2.0.2/24")]})  # fmt: skip
    assert [str(a) for a in flat["b"].interface.addresses] == ["10.2.0.2/24"]


def test_kept_keys_stay_and_new_hosts_get_new_ones():
    first = configs(parse_hosts(THREE, HOSTS), {})
    assert all(h.new_key for h in first)
    assert len({h.private_key for h in first}) == 3
    kept = {first[0].name: first[0].private_key, first[2].name: first[2].private_key}
    again = configs(parse_hosts(THREE, HOSTS), kept)
    assert [h.new_key for h in again] == [False, True, False]
    assert again[0].private_key == first[0].private_key
    assert again[2].private_key == first[2].private_key
    assert again[1].private_key != first[1].private_key
    # Each config names its peers by the keys they hold.
    got = mesh(THREE, kept)
    assert public(got["a"]) == keys.public_key(first[0].private_key)
    assert peers(got, "b")["c"].public_key == keys.public_key(first[2].private_key)


@pytest.mark.parametrize(
    "change, error",
    [
        ({"colour": 1}, "colour: unknown key"),
        ({"host": []}, "host: no hosts: give each host a [[host]] table"),
        ({"mode": "l3"}, "mode: must be one of tun, tap; got 'l3'"),
        ({"hub": "z"}, "hub: 'z' is not the name of any host"),
        ({"listen_port": 70000}, "listen_port: must be a whole number from 0 to 65535, got 70000"),
        ({"device": "a/b"},
         "device: 'a/b' is not a valid device name (1-15 of A-Z a-z 0-9 _ = + . -)"),
        ({"device": "wg0\n"},
         "device: 'wg0\\n' is not a valid device name (1-15 of A-Z a-z 0-9 _ = + . -)"),
        ({1: {"name": "b\n"}},
         "host[1].name: 'b\\n' is not a host name (1-64 of A-Z a-z 0-9 _ . -)"),
        ({1: {"colour": 1}}, "host[1].colour: unknown key"),
        ({1: {"name": "a"}}, "host[1].name: 'a' is also host[0]'s name"),
        ({1: {"name": "../x"}},
         "host[1].name: '../x' is not a host name (1-64 of A-Z a-z 0-9 _ . -)"),
        ({1: {"name": None}}, "host[1].name: missing"),
        ({1: {"endpoint": "192.0.2.2"}},
         "host[1].endpoint: '192.0.2.2' is not host:port (IPv6 as [addr]:port)"),
        ({1: {"address": None}}, "host[1].address: missing: a tun host needs its tunnel address"),
        ({1: {"address": "10.1.0.300/24"}},
         "host[1].address[0]: '10.1.0.300/24' is not an address with prefix, like 10.0.0.1/24"),
        ({1: {"address": "10.1.0.1/24"}}, "host[1].address[0]: 10.1.0.1/32 overlaps host[0]'s "
         "10.1.0.1/32 (a)"),
        ({2: {"subnets": "192.168.0.0/16"}},
         "host[2].subnets[0]: 192.168.0.0/16 overlaps host[0]'s 192.168.1.0/24 (a)"),
        ({2: {"subnets": "10.1.0.128/25"}},
         "host[2].subnets[0]: 10.1.0.128/25 overlaps host[0]'s 10.1.0.0/24 (a)"),
        ({1: {"endpoint": None}},
         "host[2].endpoint: missing: host[1] (b) has none either, so neither can reach the other"),
        ({"hub": "b", 1: {"endpoint": None}},
         "host[2].endpoint: missing: host[1] (b) has none either, so neither can reach the other"),
        ({1: {"mode": "tap", "address": None}},
         "host[1].mode: tap, but host[0] is tun: tun and tap hosts cannot talk"),
        ({1: {"bridge": "br0"}}, "host[1].bridge: only a tap host can join a bridge"),
        ({"mode": "tap"},
         "host[0].subnets: only in tun mode: in tap mode the hosts behind a host are on its "
         "bridge"),
        ({"mode": "tap", "bridge": "br0", "hub": "a", 0: {"subnets": None}},
         "host[0].address: a tap host on a bridge has its address on the bridge, not on the "
         "tunnel device: leave it out"),
        ({"mode": "tap", 0: {"subnets": None}, 1: {"bridge": "br0", "address": None}},
         "host[1].bridge: in a full tap mesh a bridge would send every peer's frames on to the "
         "others again: bridge the hosts of a hub and spokes (hub = ...)"),
        ({"mode": "tap", "hub": "a", 0: {"subnets": None}},
         "host[0].bridge: missing: a tap hub relays frames between its spokes through a bridge"),
    ],
)  # fmt: skip
def test_errors_name_the_file_and_the_key(change, error):
    data = {"host": [dict(h) for h in THREE["host"]]}
    for key, value in change.items():
        if isinstance(key, int):
            for k, v in value.items():
                data["host"][key][k] = v
            data["host"][key] = {k: v for k, v in data["host"][key].items() if v is not None}
        else:
            data[key] = value
    with pytest.raises(ConfigError) as caught:
        configs(parse_hosts(data, HOSTS), {})
    assert str(caught.value) == f"{HOSTS}: {error}"


# ---------------------------------------------------------------------------
# The command: files, their modes, keys kept across runs, errors


HOSTS_FILE = """\
hub = "alpha"

[[host]]
name = "alpha"
endpoint = "192.0.2.1:51820"
address = "10.1.0.1/24"

[[host]]
name = "beta"
address = "10.1.0.2/24"
subnets = ["192.168.2.0/24"]
"""


def test_the_command_writes_configs_and_keeps_keys_across_runs(tmp_path):
    (tmp_path / HOSTS).write_text(HOSTS_FILE)
    out = tmp_path / "out"
    first = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"{out}/alpha.toml (new key)",
        f"{out}/beta.toml (new key)",
        "alpha routes for its peers: turn on IP forwarding there: sysctl -w net.ipv4.ip_forward=1",
        "beta routes for its peers: turn on IP forwarding there: sysctl -w net.ipv4.ip_forward=1",
    ]
    assert sorted(p.name for p in out.iterdir()) == ["alpha.key", "alpha.toml", "beta.key",
                                                     "beta.toml"]  # fmt: skip
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    before = {p.name: p.read_text() for p in out.iterdir()}
    alpha, beta = load(str(out / "alpha.toml")), load(str(out / "beta.toml"))
    assert alpha.warnings == beta.warnings == []
    assert alpha.peers[0].public_key == keys.public_key(beta.interface.private_key)
    assert beta.peers[0].public_key == keys.public_key(alpha.interface.private_key)
    again = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out))
    assert again.returncode == 0 and "(key kept)" in again.stdout and "new key" not in again.stdout
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_the_command_writes_wg_quick_files(tmp_path):
    (tmp_path / HOSTS).write_text(HOSTS_FILE)
    out = tmp_path / "out"
    result = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out), "--format", "wg-quick")
    assert result.returncode == 0, result.stderr
    conf = out / "beta" / "pyvpn0.conf"  # wg-quick's device is its file's name
    text = conf.read_text()
    private = keys.decode((out / "beta.key").read_text())
    alpha_public = keys.encode(keys.public_key(keys.decode((out / "alpha.key").read_text())))
    assert text.splitlines() == [
        "[Interface]",
        f"PrivateKey = {keys.encode(private)}",
        "ListenPort = 51820",
        "Address = 10.1.0.2/24",
        "",
        "[Peer]",
        f"PublicKey = {alpha_public}",
        "Endpoint = 192.0.2.1:51820",
        "AllowedIPs = 10.1.0.0/24",
        "PersistentKeepalive = 25",
    ]
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    # wg-quick reads it, without a warning about who may read the key in it.
    stripped = subprocess.run(["wg-quick", "strip", str(conf)],
                              capture_output=True, text=True)  # fmt: skip
    assert (stripped.returncode, stripped.stderr) == (0, "")
    # It prints what wg(8) takes, so it leaves Address out (and ends in an empty line).
    lines = [line for line in text.splitlines() if not line.startswith("Address")]
    assert stripped.stdout.splitlines() == [*lines, ""]


def test_bad_hosts_are_one_line_exit_2_and_write_nothing(tmp_path):
    (tmp_path / HOSTS).write_text(HOSTS_FILE.replace('"10.1.0.2/24"', '"10.1.0.1/24"'))
    out = tmp_path / "out"
    result = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"pyvpn: {tmp_path / HOSTS}: host[1].address[0]: 10.1.0.1/32 overlaps host[0]'s "
        "10.1.0.1/32 (alpha)\n"
    )
    assert not out.exists()
    (tmp_path / HOSTS).write_text(HOSTS_FILE.replace('hub = "alpha"', "hub = "))
    result = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "not valid TOML" in result.stderr and not out.exists()
    out.mkdir()
    (tmp_path / HOSTS).write_text(HOSTS_FILE)
    (out / "beta.key").write_text("garbage\n")
    result = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out))
    assert result.returncode == 2 and result.stderr.startswith(f"pyvpn: {out}/beta.key: ")
    assert result.stderr.count("\n") == 1 and sorted(os.listdir(out)) == ["beta.key"]
    tap = HOSTS_FILE.replace('hub = "alpha"', 'mode = "tap"\nhub = "alpha"\nbridge = "br0"')
    (tmp_path / HOSTS).write_text(tap.replace("address", "#").replace("subnets", "#"))
    (out / "beta.key").unlink()
    result = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out), "--format", "wg-quick")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "interface.mode" in result.stderr and os.listdir(out) == []
    # A directory that cannot be made is a runtime failure: status 1, one line.
    result = pyvpn("mesh", str(tmp_path / HOSTS), "--out", "/proc/pyvpn-mesh")
    assert (result.returncode, result.stderr) == (
        1,
        "pyvpn: /proc/pyvpn-mesh: No such file or directory\n",
    )


def test_wg_quick_files_take_the_device_name_whatever_the_host_name(tmp_path):
    """wg-quick names the device after the file: DIR/NAME/DEVICE.conf, so the
    `device` setting holds and a host name of 64 characters still loads."""
    long_name = "a-host-name-that-is-far-longer-than-any-device-name-may-be-" + "x" * 5
    assert len(long_name) == 64
    text = HOSTS_FILE.replace('name = "beta"', f'name = "{long_name}"\ndevice = "wg+1"')
    (tmp_path / HOSTS).write_text('device = "wg0"\n' + text)
    out = tmp_path / "out"
    result = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out), "--format", "wg-quick")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        ["alpha.key", "alpha/wg0.conf", f"{long_name}.key", f"{long_name}/wg+1.conf"]
    )
    for conf, device in (
        (out / "alpha" / "wg0.conf", "wg0"),
        (out / long_name / "wg+1.conf", "wg+1"),
    ):
        loaded = load(str(conf))
        assert (loaded.interface.name, loaded.warnings) == (device, [])
        stripped = subprocess.run(["wg-quick", "strip", str(conf)], capture_output=True, text=True)
        assert (stripped.returncode, stripped.stderr) == (0, "")


def test_kept_keys_are_each_hosts_own_and_others_may_not_read_them(tmp_path):
    (tmp_path / HOSTS).write_text(HOSTS_FILE)
    out = tmp_path / "out"
    assert pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out)).returncode == 0
    # A key file others may read is reused, with wg's warning.
    (out / "beta.key").chmod(0o644)
    result = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out))
    assert result.returncode == 0 and "beta.toml (key kept)" in result.stdout
    assert result.stderr == (
        f"pyvpn: {out}/beta.key: warning: key file is accessible by others (mode 644); "
        "chmod 600 it\n"
    )
    # One key in two hosts' files (a copy) would make them one peer to the others.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "beta.key").write_bytes((out / "alpha.key").read_bytes())
    (out / "beta.key").chmod(0o600)
    result = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"pyvpn: {out}/beta.key: holds the same key as {out}/alpha.key: each host needs a key "
        "of its own (remove one file, and the next run makes a new key for it)\n"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "beta.key"} == {
        n: b for n, b in before.items() if n != "beta.key"
    }


def test_key_and_config_files_are_0600_whatever_was_left_at_a_temporary_name(tmp_path):
    """A crash's leftover at the old fixed temporary names (.NAME.key.tmp of mode
    0666, NAME.toml.tmp of 0644) or a symlink planted there is neither written
    through nor lends its mode: the files come out 0600, the symlink's target as it
    was."""
    (tmp_path / HOSTS).write_text(HOSTS_FILE)
    out = tmp_path / "out"
    out.mkdir()
    for name, mode in ((".alpha.key.tmp", 0o666), (".alpha.toml.tmp", 0o644)):
        (out / name).write_text("left over\n")
        (out / name).chmod(mode)
    victim = tmp_path / "victim"
    victim.write_text("not yours\n")
    (out / ".beta.key.tmp").symlink_to(victim)
    (out / ".beta.toml.tmp").symlink_to(victim)
    result = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(out))
    assert result.returncode == 0, result.stderr
    for name in ("alpha.key", "alpha.toml", "beta.key", "beta.toml"):
        path = out / name
        assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert victim.read_text() == "not yours\n"
    assert load(str(out / "beta.toml")).warnings == []


# ---------------------------------------------------------------------------
# Five namespaces on one switch


SWITCH = "br0"


@pytest.fixture(scope="module")
def underlay():
    """Namespaces a to e, each with a veth into one bridge in namespace s, at
    198.18.1.1 to .5."""
    with Testbed(n=5, tag="mesh") as bed:
        switch = bed.add_namespace("s")
        bed.add_bridge(switch, SWITCH)
        hosts = bed.namespaces[:5]
        for i, ns in enumerate(hosts, start=1):
            bed.link(switch, ns, [], [f"198.18.1.{i}/24"], bridge1=SWITCH)
        for i in range(2, 6):
            hosts[0].run("ping", "-q", "-c", "1", "-w", "5", f"198.18.1.{i}")
        yield hosts
    assert leftovers() == []


def generate(tmp_path: Path, text: str) -> tuple[list[Path], list[str]]:
    """`pyvpn mesh`: the configs it wrote, and the rest it said."""
    (tmp_path / HOSTS).write_text(text)
    result = pyvpn("mesh", str(tmp_path / HOSTS), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    return [Path(line.split()[0]) for line in lines if " (new key)" in line], [
        line for line in lines if " (new key)" not in line
    ]


def unanswered(pings: list[tuple[Namespace, str]]) -> list[tuple[str, str]]:
    """The pings (from, to) that found no answer, all tried at once."""

    def answered(ping: tuple[Namespace, str]) -> bool:
        ns, address = ping
        argv = ("ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", "10", address)
        return ns.run(*argv, check=False, timeout=15).returncode == 0

    with ThreadPoolExecutor(len(pings)) as pool:
        results = list(pool.map(answered, pings))
    return [(ns.label, address) for (ns, address), ok in zip(pings, results, strict=True) if not ok]


def reach_all(hosts: list[Namespace], addresses: list[str]) -> None:
    pairs = itertools.permutations(zip(hosts, addresses, strict=True), 2)
    assert unanswered([(a, address) for (a, _), (_, address) in pairs]) == []


@pytest.mark.parametrize("hub", [None, "a"])
def test_five_hosts_in_tun_all_reach_each_other(underlay, tmp_path, hub):
    """A full mesh, and a hub whose kernel forwards between the spokes, as `pyvpn
    mesh` says to set up. e has no endpoint: it greets the others at start, and
    they learn where it is. b has a subnet behind it, here an address on its
    loopback."""
    names = [device_name("pvmsh", label) for label in "abcde"]
    hosts_file = (f'hub = "{hub}"\n' if hub else "") + "".join(
        f'\n[[host]]\nname = "{label}"\ndevice = "{names[i]}"\naddress = "10.50.0.{i + 1}/24"\n'
        + (f'endpoint = "198.18.1.{i + 1}:51820"\n' if label != "e" else "")
        + ('subnets = ["10.51.2.0/24"]\n' if label == "b" else "")
        for i, label in enumerate("abcde")
    )
    paths, said = generate(tmp_path, hosts_file)
    assert [p.name for p in paths] == [f"{label}.toml" for label in "abcde"]
    forwarders = ["b", "a"] if hub else ["b"]
    assert [line.split()[0] for line in said] == sorted(forwarders)
    for line in said:  # as the user is told
        command = line.split(" there: ")[1].split()
        underlay["abcde".index(line.split()[0])].run(*command)
    underlay[1].add_address("lo", "10.51.2.1/32")
    try:
        with contextlib.ExitStack() as stack:
            for ns, path in zip(underlay, paths, strict=True):
                stack.enter_context(start_pyvpn(ns, path))
            reach_all(underlay, [f"10.50.0.{i}" for i in range(1, 6)])
            others = underlay[:1] + underlay[2:]
            assert unanswered([(ns, "10.51.2.1") for ns in others]) == []
    finally:
        underlay[1].run("ip", "addr", "del", "10.51.2.1/32", "dev", "lo", check=False)
        for ns in underlay:
            ns.sysctl("net.ipv4.ip_forward", 0)


def test_five_hosts_in_a_tap_mesh_all_reach_each_other(underlay, tmp_path):
    """No bridges: each tap device has its host's address, each host's frames go
    straight to the others."""
    names = [device_name("pvmsh", label) for label in "klmno"]
    hosts_file = 'mode = "tap"\n' + "".join(
        f'\n[[host]]\nname = "{label}"\ndevice = "{names[i]}"\naddress = "10.61.0.{i + 1}/24"\n'
        + (f'endpoint = "198.18.1.{i + 1}:51822"\n' if label != "e" else "")
        for i, label in enumerate("abcde")
    )
    paths, said = generate(tmp_path, hosts_file)
    assert said == []
    with contextlib.ExitStack() as stack:
        for ns, path in zip(underlay, paths, strict=True):
            stack.enter_context(start_pyvpn(ns, path))
        reach_all(underlay, [f"10.61.0.{i}" for i in range(1, 6)])


def test_five_hosts_on_a_tap_hub_all_reach_each_other(underlay, tmp_path):
    """A bridge in each namespace holds its address; the hub's bridge relays between
    the spokes. d and e have no endpoint."""
    names = [device_name("pvmsh", label) for label in "fghij"]
    hosts_file = 'mode = "tap"\nhub = "a"\nbridge = "br1"\n' + "".join(
        f'\n[[host]]\nname = "{label}"\ndevice = "{names[i]}"\n'
        + (f'endpoint = "198.18.1.{i + 1}:51821"\n' if label in "abc" else "")
        for i, label in enumerate("abcde")
    )
    paths, said = generate(tmp_path, hosts_file)
    assert said == []  # the hub's bridge forwards, not its kernel's IP routing
    for i, ns in enumerate(underlay, start=1):
        ns.run("ip", "link", "add", "br1", "type", "bridge")
        ns.add_address("br1", f"10.60.0.{i}/24")
        ns.link_up("br1")
    try:
        with contextlib.ExitStack() as stack:
            for ns, path in zip(underlay, paths, strict=True):
                stack.enter_context(start_pyvpn(ns, path))
            reach_all(underlay, [f"10.60.0.{i}" for i in range(1, 6)])
    finally:
        for ns in underlay:
            ns.run("ip", "link", "del", "br1", check=False)
