"""tunnel/control/convert.py: the TOML-shaped dict written as pyvpn's TOML and as a
wg-quick INI file."""

import ipaddress
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.control.config import parse
from tunnel.control.convert import ConvertError, pyvpn_only, to_toml, to_wg_quick

from ..conftest import ROOT

CONFIGS = ROOT / "configs"
EXAMPLES = sorted(CONFIGS.glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_to_toml_writes_what_tomllib_reads_back(path: Path) -> None:
    data = tomllib.loads(path.read_text())
    assert tomllib.loads(to_toml(data)) == data
    assert parse(tomllib.loads(to_toml(data))) == parse(data)


toml_scalars = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"])),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
)


@given(
    st.dictionaries(st.text(st.characters(exclude_categories=["Cs"]), min_size=1), toml_scalars),
    st.lists(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), toml_scalars)),
)
def test_to_toml_escapes_any_string(interface: dict, peers: list) -> None:
    data = {"interface": interface, "peer": peers}
    read = tomllib.loads(to_toml(data))
    assert read.get("interface") == interface
    assert read.get("peer", []) == peers


def test_to_toml_leaves_out_none() -> None:
    text = to_toml({"interface": {"name": "a", "mtu": None}, "peer": [{"endpoint": None}]})
    assert tomllib.loads(text) == {"interface": {"name": "a"}, "peer": [{}]}


def test_to_wg_quick_writes_wg_quicks_keys() -> None:
    data = tomllib.loads((CONFIGS / "tun-a.toml").read_text())
    data["interface"].update(
        dns=["10.10.0.53", "lan.example"],
        post_up=["echo up %i", "echo a, b"],
        table="off",
        fwmark=51820,
        save_config=True,
    )
    data["peer"][0]["preshared_key"] = data["peer"][0]["public_key"]
    assert to_wg_quick(data, name="tun-a") == (
        "[Interface]\n"
        "PrivateKey = 8Cii0TwBeJOyO3zfGArk/EF6PWF2bL1B6bAPrKUUfF8=\n"
        "ListenPort = 51820\n"
        "Address = 10.10.0.1/24, fd10::1/64\n"
        "DNS = 10.10.0.53, lan.example\n"
        "PostUp = echo up %i\n"
        "PostUp = echo a, b\n"
        "Table = off\n"
        "FwMark = 51820\n"
        "SaveConfig = true\n"
        "\n"
        "[Peer]\n"
        "PublicKey = JppVa1YzgvcS3ds2ci8hVAY7AETBWoxzDMAQBpHL/HA=\n"
        "Endpoint = 192.0.2.2:51820\n"
        "AllowedIPs = 10.10.0.2/32, fd10::2/128\n"
        "PersistentKeepalive = 25\n"
        "PresharedKey = JppVa1YzgvcS3ds2ci8hVAY7AETBWoxzDMAQBpHL/HA=\n"
    )


def test_pyvpn_only_keys_are_named_or_left_out() -> None:
    data = tomllib.loads((CONFIGS / "tap-a.toml").read_text())
    data["interface"]["datapath"] = "python"
    data["peer"][0]["allowed_macs"] = ["02:00:00:00:00:01"]
    expected = [
        "interface.mode",
        "interface.bridge",
        "interface.mac_ageing",
        "interface.datapath",
        "peer[0].allowed_macs",
    ]
    assert pyvpn_only(data, name="tap-a") == expected
    with pytest.raises(ConvertError) as e:
        to_wg_quick(data, name="tap-a")
    assert str(e.value).startswith(", ".join(expected) + ": only pyvpn's TOML has these keys")
    text = to_wg_quick(data, name="tap-a", lossy=True)
    assert "bridge" not in text.lower() and "mode" not in text.lower()
    assert text.startswith("[Interface]\nPrivateKey = ")


def test_a_name_other_than_the_files_is_pyvpn_only() -> None:
    data = {"interface": {"name": "office", "mode": "tun", "private_key": "x"}}
    assert pyvpn_only(data) == []
    assert pyvpn_only(data, name="office") == []
    assert pyvpn_only(data, name="wg0") == ["interface.name"]
    key_files = {"interface": {"private_key_file": "a.key"}, "peer": [{"preshared_key_file": "p"}]}
    assert pyvpn_only(key_files) == ["interface.private_key_file", "peer[0].preshared_key_file"]


@pytest.mark.parametrize(
    ("interface", "problem"),
    [
        ({"post_up": "echo hi # there"}, "interface.post_up: 'echo hi # there' holds a '#'"),
        ({"pre_down": ["true", "echo\nrm"]}, "interface.pre_down: 'echo\\nrm' cannot be one line"),
        ({"dns": ["a, b"]}, "interface.dns: 'a, b' cannot be an item of a comma list"),
    ],
)
def test_what_a_wg_quick_line_cannot_hold_is_an_error(interface: dict, problem: str) -> None:
    with pytest.raises(ConvertError) as e:
        to_wg_quick({"interface": interface})
    assert str(e.value).startswith(problem)


def test_save_config_keeps_key_files_in_use_and_takes_the_running_peers(tmp_path: Path) -> None:
    from tunnel.control.config import load
    from tunnel.control.save_config import running_data
    from tunnel.core.interface import Interface
    from tunnel.protocol import keys
    from tunnel.protocol.peer_config import PeerConfig

    private, psk = keys.generate_private_key(), keys.generate_preshared_key()
    (tmp_path / "a.key").write_text(keys.encode(private))
    (tmp_path / "p.psk").write_text(keys.encode(psk))
    for path in (tmp_path / "a.key", tmp_path / "p.psk"):
        path.chmod(0o600)
    peer = keys.encode(keys.public_key(keys.generate_private_key()))
    path = tmp_path / "a.toml"
    path.write_text(
        '[interface]\nprivate_key_file = "a.key"\nmode = "tun"\nmtu = 1400\nfwmark = 7\n'
        f'[[peer]]\npublic_key = "{peer}"\npreshared_key_file = "p.psk"\n'
    )
    config = load(str(path))
    iface = Interface(private, mtu=1380)
    iface.add_peer(config.peers[0])
    added = keys.public_key(keys.generate_private_key())
    iface.add_peer(PeerConfig(added, psk, ("192.0.2.9", 1), [ipaddress.ip_network("10.0.0.9/32")]))
    data = running_data(config, iface, 4242, 0, 1380)
    assert data == {
        "interface": {"private_key_file": "a.key", "mode": "tun", "mtu": 1380, "listen_port": 4242},
        "peer": [
            {"public_key": peer, "preshared_key_file": "p.psk"},
            {
                "public_key": keys.encode(added),
                "preshared_key": keys.encode(psk),  # not the file's peer: the key inline
                "endpoint": "192.0.2.9:1",
                "allowed_ips": ["10.0.0.9/32"],
            },
        ],
    }
    iface.set_private_key(keys.generate_private_key())  # `wg set wg0 private-key ...`
    data = running_data(config, iface, 4242, 0, 1380)
    assert data["interface"]["private_key"] == keys.encode(iface.identity.private_key)
    assert "private_key_file" not in data["interface"]
    iface.set_private_key(bytes(32))  # none, as `wg showconf` then gives no PrivateKey
    data = running_data(config, iface, 4242, 0, 1380)
    assert {"private_key", "private_key_file"}.isdisjoint(data["interface"])


def test_save_config_writes_0600_whatever_was_left_at_the_temporary_name(tmp_path: Path) -> None:
    """SaveConfig writes the private key: a leftover NAME.conf.tmp of mode 0644 (an
    earlier crash's, at the name it used to write) lends the file no mode, and a
    symlink planted there is not written through."""
    import stat

    from tunnel.control.config import load
    from tunnel.control.save_config import write
    from tunnel.protocol import keys

    path = tmp_path / "wg0.conf"
    key = keys.encode(keys.generate_private_key())
    path.write_text(f"[Interface]\nPrivateKey = {key}\nSaveConfig = true\n")
    path.chmod(0o600)
    config = load(str(path))
    leftover = tmp_path / "wg0.conf.tmp"
    leftover.write_text("left over\n")
    leftover.chmod(0o644)
    data = {"interface": {"private_key": key, "listen_port": 4242, "save_config": True}}
    write(config, data)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "ListenPort = 4242" in path.read_text()
    victim = tmp_path / "victim"
    victim.write_text("not yours\n")
    leftover.unlink()
    leftover.symlink_to(victim)
    write(config, {"interface": {**data["interface"], "listen_port": 4343}})
    assert victim.read_text() == "not yours\n" and not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "ListenPort = 4343" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim", "wg0.conf", "wg0.conf.tmp"]
