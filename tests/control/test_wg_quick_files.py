"""wg-quick's own INI files: read as wg-quick and wg read them (every key, comma
lists and repeated keys, any case, comments), each error as `FILE:LINE: Key: ...`;
`pyvpn convert` both ways; and, in namespaces, `pyvpn up NAME.conf` with its hooks,
DNS through resolvconf and SaveConfig, against a pyvpn peer running from TOML."""

import contextlib
import ipaddress
import os
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel import cli
from tunnel.control import config, wg_quick
from tunnel.control.config import ConfigError
from tunnel.control.convert import to_toml, to_wg_quick
from tunnel.lab.testbed import (
    INNER_A,
    INNER_B,
    UNDERLAY_B,
    Namespace,
    device_name,
    pyvpn_status,
    start_pyvpn,
    uapi_socket,
    wait_for,
    wait_reachable,
    wireguard_go,
    write_pair_configs,
)
from tunnel.protocol import keys

from ..bed import leftovers
from ..conftest import ROOT, pyvpn

CONFIGS = ROOT / "configs"
KEY_A = "8Cii0TwBeJOyO3zfGArk/EF6PWF2bL1B6bAPrKUUfF8="
PUB_B = "JppVa1YzgvcS3ds2ci8hVAY7AETBWoxzDMAQBpHL/HA="
PUB_C = "aEfKy51WKkmhVR+aQzJ0VM3asuAshUjXO1bIBMBuSwg="

EVERY_KEY = f"""\
# wg0: every key wg-quick and wg take
[Interface]
PrivateKey = {KEY_A}
Address = 10.10.0.1/24, fd10::1/64   # a comma list...
Address = 10.10.1.1/24               # ...and a repeated key add up
ListenPort = 51820
DNS = 10.10.0.53, fd10::53 lan.example
MTU = 1420
Table = 1234
FwMark = 0x1234
PreUp = echo pre-up %i
PostUp = echo post-up %i; echo a, b
PostUp = true
PreDown = echo pre-down %i
PostDown = echo post-down %i
SaveConfig = true

[Peer]
PublicKey = {PUB_B}
PresharedKey = {PUB_C}
AllowedIPs = 10.10.0.2/32, fd10::2/128
AllowedIPs = 10.20.0.0/16
Endpoint = 192.0.2.2:51820
PersistentKeepalive = 25

[peer]
publickey={PUB_C}
ENDPOINT = [2001:db8::1]:51820
persistentKeepalive = off
"""


def read(text: str, name: str = "wg0.conf") -> config.Source:
    return config.source(text, name)


def test_every_key_reads_as_its_toml_key() -> None:
    assert read(EVERY_KEY).data == {
        "interface": {
            "name": "wg0",
            "private_key": KEY_A,
            "address": ["10.10.0.1/24", "fd10::1/64", "10.10.1.1/24"],
            "listen_port": 51820,
            "dns": ["10.10.0.53", "fd10::53", "lan.example"],
            "mtu": 1420,
            "table": 1234,
            "fwmark": 0x1234,
            "pre_up": ["echo pre-up %i"],
            "post_up": ["echo post-up %i; echo a, b", "true"],
            "pre_down": ["echo pre-down %i"],
            "post_down": ["echo post-down %i"],
            "save_config": True,
        },
        "peer": [
            {
                "public_key": PUB_B,
                "preshared_key": PUB_C,
                "allowed_ips": ["10.10.0.2/32", "fd10::2/128", "10.20.0.0/16"],
                "endpoint": "192.0.2.2:51820",
                "persistent_keepalive": 25,
            },
            {
                "public_key": PUB_C,
                "endpoint": "[2001:db8::1]:51820",
                "persistent_keepalive": 0,
            },
        ],
    }
    c = config.load_source(read(EVERY_KEY))
    assert c.format == "wg-quick" and c.interface.name == "wg0"
    assert c.interface.hooks["post_up"] == ["echo post-up %i; echo a, b", "true"]
    assert c.interface.dns == ["10.10.0.53", "fd10::53", "lan.example"]
    assert c.interface.save_config and c.interface.table == 1234
    assert [p.persistent_keepalive for p in c.peers] == [25, 0]
    assert c.peers[0].preshared_key == keys.decode(PUB_C)


def test_values_as_wg_reads_them() -> None:
    def interface(line: str) -> dict:
        return read(f"[Interface]\nPrivateKey = {KEY_A}\n{line}\n").data["interface"]

    # As wg's parse_fwmark: "off", decimal (a leading 0 is no octal prefix), and hex
    # after a lowercase 0x only.
    assert interface("FwMark = off")["fwmark"] == interface("FwMark = OFF")["fwmark"] == 0
    assert interface("FwMark = 010")["fwmark"] == 10
    assert interface("FwMark = 0x10")["fwmark"] == 16
    assert interface("FwMark = 0xfF")["fwmark"] == 255
    assert interface("FwMark = 51820")["fwmark"] == 51820
    assert interface("FwMark = 0X10")["fwmark"] == "0X10"  # refused by config.parse (ERRORS)
    assert interface("SaveConfig = False")["save_config"] is False
    assert interface("Table = off")["table"] == "off"
    assert interface("Table = main")["table"] == "main"
    assert interface("PostUp = a=b # c")["post_up"] == ["a=b"]  # split at the first '='
    assert interface("Address =")["address"] == []
    assert "dns" not in interface("# DNS = 10.0.0.1")


def test_a_windows_file_and_a_missing_last_newline_read_the_same() -> None:
    text = f"[Interface]\r\nPrivateKey = {KEY_A}\r\n[Peer]\r\nPublicKey = {PUB_B}"
    assert read(text).data["peer"] == [{"public_key": PUB_B}]


def test_the_format_is_known_by_its_sections() -> None:
    assert wg_quick.is_wg_quick("[Interface]\nPrivateKey = x\n")
    assert wg_quick.is_wg_quick("  [Interface]  # wg0\n")
    assert wg_quick.is_wg_quick("[interface]\nPrivateKey = x\n[Peer]\n")
    for path in CONFIGS.glob("*.toml"):
        assert not wg_quick.is_wg_quick(path.read_text())


def wg0(tmp_path: Path, text: str, name: str = "wg0.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


# Each broken line, in place of line 4 of a good file, and the one-line error.
GOOD = (
    f"[Interface]\nPrivateKey = {KEY_A}\nAddress = 10.0.0.1/24\n{{}}\n[Peer]\nPublicKey = {PUB_B}\n"
)
ERRORS = [
    ("AllowedIPs = 10.0.0.2/32", "wg0.conf:4: AllowedIPs: belongs in [Peer]"),
    ("ListenPort = port", "wg0.conf:4: ListenPort: must be a whole number from 0 to 65535"),
    ("MTU = 100", "wg0.conf:4: MTU: must be a whole number from 576 to 65407, got 100"),
    ("Mode = tap", "wg0.conf:4: Mode: unknown key (tap mode and pyvpn's own keys are in TOML"),
    ("Address = 10.0.0.300/24", "wg0.conf:4: Address: '10.0.0.300/24' is not an address"),
    ("DNS = 10.0.0.1, bad!name", "wg0.conf:4: DNS: 'bad!name' is neither an IP address nor"),
    ("DNS = 10.0.0.999", "wg0.conf:4: DNS: '10.0.0.999' is not a nameserver's IP address"),
    ("SaveConfig = yes", "wg0.conf:4: SaveConfig: must be true or false, got 'yes'"),
    ("Table = 255", "wg0.conf:4: Table: 255 is the kernel's local table"),
    ("Table = vpn", 'wg0.conf:4: Table: must be "auto", "off", "main" or a table number'),
    ("FwMark = 0x100000000", "wg0.conf:4: FwMark: must be a whole number from 0 to 4294967295"),
    ("FwMark = 0X10", "wg0.conf:4: FwMark: must be a whole number from 0 to 4294967295, got '0X"),
    ("FwMark = 0x", "wg0.conf:4: FwMark: must be a whole number from 0 to 4294967295, got '0x'"),
    ("FwMark = -1", "wg0.conf:4: FwMark: must be a whole number from 0 to 4294967295, got '-1'"),
    ("PrivateKey = abc", "wg0.conf:4: PrivateKey: not a key"),
    ("[Peers]", "wg0.conf:4: [Peers]: unknown section (there are [Interface], [Peer])"),
    ("just words", "wg0.conf:4: just words: is not a line like Key = value"),
]


@pytest.mark.parametrize(("line", "error"), ERRORS, ids=[e[0] for e in ERRORS])
def test_each_error_names_file_line_and_key(tmp_path: Path, line: str, error: str) -> None:
    path = wg0(tmp_path, GOOD.format(line))
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    assert str(e.value).startswith(f"{tmp_path}/{error}"), str(e.value)


HEAD = f"[Interface]\nPrivateKey = {KEY_A}\n"
PEER_B = f"[Peer]\nPublicKey = {PUB_B}\n"
SECTION_ERRORS = [
    ("Address = 10.0.0.1/24\n[Interface]\n", "wg0.conf:1: Address: comes before the [Interface]"),
    (HEAD + "\n[Peer]\nEndpoint = 192.0.2.1:1\n", "wg0.conf:4: PublicKey: missing"),
    (PEER_B, "wg0.conf: [Interface]: missing"),
    (HEAD + PEER_B + PEER_B, "wg0.conf:6: PublicKey: the same peer is listed twice"),
    (HEAD + PEER_B + "Endpoint = 192.0.2.1\n", "wg0.conf:5: Endpoint:"),
]


@pytest.mark.parametrize(("text", "error"), SECTION_ERRORS)
def test_errors_of_whole_sections(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(str(wg0(tmp_path, text)))
    assert str(e.value).startswith(f"{tmp_path}/{error}"), str(e.value)


def test_the_interface_is_named_after_the_file(tmp_path: Path) -> None:
    text = GOOD.format("")
    # Every name wg-quick takes: '+' and '=' too, which Linux takes.
    for name in ("office-1", "wg+0", "wg=1", "a.b_c-15chars.x"):
        loaded = config.load(str(wg0(tmp_path, text, f"{name}.conf")))
        assert (loaded.interface.name, loaded.warnings) == (name, [])
    for name, error in [
        ("wg0.toml", ": a wg-quick file is named after its interface: NAME.conf"),
        ("a-name-too-long0.conf", ": a wg-quick file is named after its interface: NAME.conf"),
        ("wg0.conf\n", ": a wg-quick file is named after its interface: NAME.conf"),
        ("..conf", ": interface name (the file's name): '.' is not a valid device name"),
    ]:
        with pytest.raises(ConfigError) as e:
            config.load(str(wg0(tmp_path, text, name)))
        assert str(e.value).startswith(wg_quick.shown(f"{tmp_path}/{name}") + error), str(e.value)


def test_a_comment_may_hold_any_bytes_as_in_wg_quick(tmp_path: Path) -> None:
    """wg-quick and wg read bytes: a comment an editor wrote in Latin-1 is still
    a comment. Only a setting must be UTF-8, and a TOML file throughout."""
    path = tmp_path / "wg0.conf"
    path.write_bytes(GOOD.format("# caf\xe9 au lait").encode("latin-1"))
    assert config.load(str(path)).interface.name == "wg0"
    path.write_bytes(GOOD.format("PostUp = echo caf\xe9").encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    assert str(e.value) == f"{path}:4: not UTF-8 text (only a comment may hold other bytes)"
    toml = tmp_path / "a.toml"
    toml.write_bytes(b'# caf\xe9\n[interface]\nname = "a"\n')
    with pytest.raises(ConfigError) as e:
        config.load(str(toml))
    assert str(e.value) == f"{toml}:1: not UTF-8 text, which a TOML file is"


def test_a_byte_order_mark_is_named_as_what_is_wrong(tmp_path: Path) -> None:
    """wg-quick does not read a file that starts with a UTF-8 BOM ("\ufeff[Interface]"
    is no section to it, and `wg setconf` refuses the line): said as such, not as
    "not valid TOML"."""
    path = tmp_path / "wg0.conf"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.format("").encode())
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    assert str(e.value) == (
        f"{path}: starts with a UTF-8 byte order mark, which neither wg-quick nor TOML reads: "
        "save it without one"
    )


def test_a_bare_name_is_looked_up_as_wg_quick_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pyvpn up wg0` is `wg-quick up wg0`: /etc/wireguard/wg0.conf (or pyvpn's
    /etc/pyvpn/wg0.toml), never ./wg0, which is named as a path."""
    ours, theirs = tmp_path / "pyvpn", tmp_path / "wireguard"
    ours.mkdir(), theirs.mkdir()
    monkeypatch.setattr(config, "CONFIG_DIRS", ((ours, ".toml"), (theirs, ".conf")))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        config.load("wg0")
    assert str(e.value) == f"wg0: no {ours}/wg0.toml nor {theirs}/wg0.conf"
    ini = wg0(theirs, GOOD.format(""))
    loaded = config.load("wg0")
    assert (loaded.path, loaded.format, loaded.interface.name) == (str(ini), "wg-quick", "wg0")
    assert loaded.warnings == []
    # Through the command line, whose messages name the file it found.
    assert cli.main(["convert", "wg0"]) == 0
    converted = capsys.readouterr().out
    assert tomllib.loads(converted)["interface"]["name"] == "wg0"
    # Converted into pyvpn's place, it takes over, and the load says from what.
    (ours / "wg0.toml").write_text(converted)
    (ours / "wg0.toml").chmod(0o600)
    loaded = config.load("wg0")
    assert (loaded.path, loaded.format) == (str(ours / "wg0.toml"), "toml")
    assert loaded.warnings == [f"{ours}/wg0.toml: warning: read, not {ini}"]
    # A file of that name here is not read, unless named as a path.
    (tmp_path / "wg0").write_text(converted)
    assert config.load("wg0").path == str(ours / "wg0.toml")
    assert config.load("./wg0").path == "./wg0"
    for file in (ours / "wg0.toml", ini):
        file.unlink()
    with pytest.raises(ConfigError) as e:
        config.load("wg0")
    assert str(e.value) == (
        f"wg0: no {ours}/wg0.toml nor {theirs}/wg0.conf (a bare name is never a file here: "
        "for that one, say ./wg0)"
    )
    # A name with a newline is none: a path, as given.
    assert config.config_file("wg0\n") == ("wg0\n", [])
    # wg-quick's names, '+' and '=' among them; a name with a suffix is a file's.
    plus = wg0(theirs, GOOD.format(""), "wg+1.conf")
    assert config.config_file("wg+1") == (str(plus), [])
    with pytest.raises(ConfigError, match=r"^wg1\.conf: cannot read: No such file"):
        config.load("wg1.conf")


@pytest.fixture
def etc_wireguard_file() -> Iterator[Path]:
    """A file of a name no one else uses in the real /etc/wireguard, which a bare name
    on the command line is looked up in; removed afterwards."""
    path = config.CONFIG_DIRS[1][0] / f"pvbare{os.getpid()}"[:15]
    path = path.with_name(path.name + ".conf")
    assert not path.exists()
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def test_a_bare_name_never_runs_a_file_in_the_current_directory(
    bed, tmp_path: Path, etc_wireguard_file: Path
) -> None:
    """A root shell's current directory may be anyone's: `pyvpn up NAME` there reads
    /etc/wireguard/NAME.conf, never a ./NAME whose hooks would run as root. That one
    is named as a path. Both files' PreUp hooks say which ran, and fail, so that
    nothing comes up."""
    name = etc_wireguard_file.stem
    ran = tmp_path / "ran"
    etc_wireguard_file.write_text(GOOD.format(f"PreUp = echo etc >> {ran}; exit 3"))
    etc_wireguard_file.chmod(0o600)
    here = tmp_path / "cwd"
    here.mkdir()
    (here / name).write_text(
        f'[interface]\nname = "pvcwd"\nprivate_key = "{KEY_A}"\n'
        f'pre_up = "echo cwd >> {ran}; exit 3"\n'
    )
    (here / name).chmod(0o600)
    up = pyvpn("up", name, netns=bed.a.name, cwd=here)
    assert up.returncode == 1
    assert up.stderr.endswith(f": PreUp failed (exit status 3): echo etc >> {ran}; exit 3\n")
    assert ran.read_text() == "etc\n"
    converted = pyvpn("convert", name, cwd=here)
    assert converted.returncode == 0 and "echo etc" in converted.stdout
    reload = pyvpn("reload", name, cwd=here)
    assert reload.stderr == f"pyvpn: no tunnel named {name} is running\n"
    # Named as a path, the file here is read.
    ran.unlink()
    up = pyvpn("up", f"./{name}", netns=bed.a.name, cwd=here)
    assert up.returncode == 1 and up.stderr.endswith(f"echo cwd >> {ran}; exit 3\n")
    assert ran.read_text() == "cwd\n"
    assert not bed.a.has_link(name) and not bed.a.has_link("pvcwd")


def test_a_bare_name_others_cannot_look_up_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """/etc/wireguard is root's alone (mode 0700): another user's lookup is refused
    as a config error, which the command line prints in one line."""
    assert Path("/etc/wireguard").stat().st_mode & 0o777 == 0o700
    monkeypatch.chdir("/")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # as nobody, in a child: the kernel's own EACCES, root unchanged
        try:
            os.setresuid(65534, 65534, 65534)
            config.config_file("wgnone0")
            answer = "no error"
        except ConfigError as e:
            answer = str(e)
        except BaseException as e:
            answer = repr(e)
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    os.waitpid(child, 0)
    assert answer == "wgnone0: cannot look it up: Permission denied"


def test_a_file_without_a_private_key_starts_without_one(tmp_path: Path) -> None:
    """wg-quick takes a file without PrivateKey: the key comes later, from
    `wg set` (a PostUp, say). Both formats do, with a warning, and convert."""
    text = "[Interface]\nAddress = 10.0.0.1/24\n" + PEER_B
    loaded = config.load(str(wg0(tmp_path, text)))
    assert loaded.interface.private_key == bytes(32)
    assert loaded.warnings == [
        f"{tmp_path}/wg0.conf:1: PrivateKey: none: wg0 makes and answers no handshakes "
        "until `wg set wg0 private-key FILE` gives it one"
    ]
    toml = tmp_path / "wg0.toml"
    toml.write_text(to_toml(loaded.data))
    assert "private_key" not in toml.read_text()
    again = config.load(str(toml))
    assert again.interface.private_key == bytes(32) and meaning(again) == meaning(loaded)
    assert again.warnings[0].startswith(f"{toml}: interface.private_key: none: wg0 makes")


def test_warnings_name_the_line(tmp_path: Path) -> None:
    text = GOOD.format("") + f"AllowedIPs = 10.0.0.2/32\n[Peer]\nPublicKey = {PUB_C}\n"
    text += "AllowedIPs = 10.0.0.9/32, 10.0.0.2/32\n"
    warnings = config.load(str(wg0(tmp_path, text))).warnings
    assert warnings == [
        f"{tmp_path}/wg0.conf:10: AllowedIPs: 10.0.0.2/32 is also in peer[0]'s; peer[1], "
        "listed later, gets it"
    ]


def test_a_file_others_can_read_is_a_warning(tmp_path: Path) -> None:
    path = wg0(tmp_path, GOOD.format(""))
    path.chmod(0o644)
    assert config.load(str(path)).warnings == [f"{path}: warning: world accessible; chmod 600 it"]
    path.chmod(0o640)
    assert config.load(str(path)).warnings == []
    # A TOML file with a key in it is warned of the same way; one whose keys are in
    # key files holds no secret (key_file() warns of those).
    toml = tmp_path / "wg0.toml"
    toml.write_text(to_toml(config.load(str(path)).data))
    toml.chmod(0o644)
    assert config.load(str(toml)).warnings == [f"{toml}: warning: world accessible; chmod 600 it"]
    toml.chmod(0o600)
    assert config.load(str(toml)).warnings == []
    key_file = tmp_path / "a.key"
    key_file.write_text(KEY_A + "\n")
    key_file.chmod(0o600)
    inline = f'private_key = "{KEY_A}"'
    toml.write_text(toml.read_text().replace(inline, 'private_key_file = "a.key"'))
    toml.chmod(0o644)
    assert config.load(str(toml)).warnings == []
    toml.write_text(toml.read_text() + f'preshared_key = "{PUB_C}"\n')  # into the last [[peer]]
    assert config.load(str(toml)).warnings == [f"{toml}: warning: world accessible; chmod 600 it"]


def test_up_with_a_broken_file_says_one_line_exits_2_and_leaves_nothing(bed, tmp_path) -> None:
    path = wg0(tmp_path, GOOD.format("PersistentKeepalive = 25"))

    def network() -> list[str]:
        return [
            bed.a.run("ip", *what).stdout
            for what in (
                ["-o", "link"],
                ["-o", "address"],
                ["-4", "route", "show", "table", "all"],
                ["-6", "route", "show", "table", "all"],
                ["-4", "rule"],
                ["-6", "rule"],
            )
        ]

    before = network()
    result = pyvpn("up", str(path), netns=bed.a.name)
    assert result.returncode == 2
    assert result.stderr == f"pyvpn: {path}:4: PersistentKeepalive: belongs in [Peer]\n"
    assert result.stdout == ""
    assert network() == before  # no device, address, route or rule


def test_toml_hooks_and_dns(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(
        f'[interface]\nprivate_key = "{KEY_A}"\npost_up = "echo %i"\n'
        'pre_down = ["a", "b"]\ndns = ["10.0.0.53", "lan"]\nsave_config = true\n'
    )
    c = config.load(str(path)).interface
    assert c.hooks == {"post_up": ["echo %i"], "pre_down": ["a", "b"]}
    assert c.dns == ["10.0.0.53", "lan"] and c.save_config
    path.write_text(f'[interface]\nprivate_key = "{KEY_A}"\nuser = "nobody"\npost_down = "x"\n')
    with pytest.raises(
        ConfigError, match=r"interface\.post_down: needs root after setup, which user gives up"
    ):
        config.load(str(path))


# ---------------------------------------------------------------------------
# pyvpn convert: TOML <-> wg-quick, keeping the meaning


def meaning(c: config.Config) -> tuple:
    return c.interface, c.peers


def round_trip(data: dict, tmp_path: Path) -> config.Config:
    """TOML data -> wg-quick -> TOML, through files named as each format wants."""
    name = data["interface"].get("name", "pyvpn0")
    ini = tmp_path / f"{name}.conf"
    ini.write_text(to_wg_quick(data))
    back = tmp_path / "back.toml"
    back.write_text(to_toml(config.read(str(ini)).data))
    return config.load(str(back))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("tun-*.toml")), ids=lambda p: p.name)
def test_examples_convert_there_and_back(path: Path, tmp_path: Path) -> None:
    data = tomllib.loads(path.read_text())
    del data["interface"]["mode"]  # "tun", as every wg-quick file is
    assert meaning(round_trip(data, tmp_path)) == meaning(config.parse(data))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("tap-*.toml")), ids=lambda p: p.name)
def test_tap_examples_do_not_convert(path: Path) -> None:
    result = pyvpn("convert", str(path))
    assert result.returncode == 2 and result.stdout == ""
    # A checkout's file is world readable, and these hold their private keys.
    assert result.stderr == (
        f"pyvpn: {path}: warning: world accessible; chmod 600 it\n"
        f"pyvpn: {path}: interface.mode: tap: a wg-quick file is always tun (L3)\n"
    )


def test_convert_on_the_command_line(tmp_path: Path) -> None:
    ini = wg0(tmp_path, EVERY_KEY)
    toml = pyvpn("convert", str(ini))
    assert toml.returncode == 0, toml.stderr
    (tmp_path / "wg0.toml").write_text(toml.stdout)
    (tmp_path / "wg0.toml").chmod(0o600)  # it holds the private key
    assert meaning(config.load(str(tmp_path / "wg0.toml"))) == meaning(config.load(str(ini)))
    out = tmp_path / "out" / "wg0.conf"
    out.parent.mkdir()
    again = pyvpn("convert", str(tmp_path / "wg0.toml"), "-o", str(out))
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""
    assert out.stat().st_mode & 0o777 == 0o600
    assert meaning(config.load(str(out))) == meaning(config.load(str(ini)))
    # The name in the TOML is not the file's: what wg-quick cannot say is an error...
    other = pyvpn("convert", str(tmp_path / "wg0.toml"), "-o", str(tmp_path / "wg1.conf"))
    assert other.returncode == 2 and not (tmp_path / "wg1.conf").exists()
    assert other.stderr == (
        f"pyvpn: {tmp_path}/wg0.toml: interface.name: only pyvpn's TOML has this key, "
        "a wg-quick file cannot say it (--lossy leaves them out)\n"
    )
    # ... or, asked for, left out and named.
    lossy = pyvpn(
        "convert", "--lossy", str(tmp_path / "wg0.toml"), "-o", str(tmp_path / "wg1.conf")
    )
    assert lossy.returncode == 0
    assert lossy.stderr == f"pyvpn: {tmp_path}/wg0.toml: interface.name: left out\n"
    assert config.load(str(tmp_path / "wg1.conf")).interface.name == "wg1"


def test_a_broken_file_does_not_convert(tmp_path: Path) -> None:
    path = wg0(tmp_path, GOOD.format("MTU = 1"))
    result = pyvpn("convert", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"pyvpn: {path}:4: MTU: must be a whole number")


def _key() -> st.SearchStrategy[str]:
    return st.binary(min_size=32, max_size=32).map(
        lambda b: keys.encode(keys.public_key(b))
    )  # a public key is never low-order


_ipv4_net = st.builds(
    lambda a, p: str(ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{p}", strict=False)),
    st.integers(0, 2**32 - 1),
    st.integers(1, 32),
)
_ipv6_net = st.builds(
    lambda a, p: str(ipaddress.ip_network(f"{ipaddress.IPv6Address(a)}/{p}", strict=False)),
    st.integers(0, 2**128 - 1),
    st.integers(1, 128),
)
_address = st.builds(
    lambda a, p: f"{ipaddress.IPv4Address(a)}/{p}", st.integers(1, 2**32 - 2), st.integers(8, 32)
) | st.builds(lambda a: f"fd00::{a:x}/64", st.integers(1, 0xFFFF))
_hook = st.text(
    st.characters(blacklist_characters="#\n\r\x00", blacklist_categories=["Cs"]),
    max_size=30,
).map(lambda s: s.strip(wg_quick.SPACE))
_dns = st.sampled_from(["10.0.0.53", "fd00::53", "lan.example", "corp"])
_endpoint = st.builds(
    lambda a, port: f"{ipaddress.IPv4Address(a)}:{port}",
    st.integers(1, 2**31),
    st.integers(1, 65535),
)


@st.composite
def tun_configs(draw: st.DrawFn) -> dict:
    interface: dict = {"name": draw(st.sampled_from(["wg0", "office", "a.b-c_d"]))}
    interface["private_key"] = keys.encode(draw(st.binary(min_size=32, max_size=32)))
    optional = {
        "listen_port": st.integers(0, 65535),
        "address": st.lists(_address, max_size=3),
        "dns": st.lists(_dns, max_size=3),
        "mtu": st.integers(1280, 9000),
        "table": st.sampled_from(["auto", "off", "main"]) | st.integers(1, 254),
        "fwmark": st.integers(1, 2**32 - 1),
        "pre_up": st.lists(_hook, max_size=2),
        "post_up": _hook,
        "pre_down": st.lists(_hook, max_size=2),
        "post_down": st.lists(_hook, max_size=2),
        "save_config": st.booleans(),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            interface[key] = draw(strategy)
    peers = []
    for public_key in draw(st.lists(_key(), max_size=3, unique=True)):
        peer = {"public_key": public_key}
        if draw(st.booleans()):
            peer["preshared_key"] = keys.encode(draw(st.binary(min_size=32, max_size=32)))
        if draw(st.booleans()):
            peer["endpoint"] = draw(_endpoint)
        peer["allowed_ips"] = draw(st.lists(_ipv4_net | _ipv6_net, max_size=3))
        if draw(st.booleans()):
            peer["persistent_keepalive"] = draw(st.integers(0, 65535))
        peers.append(peer)
    return {"interface": interface, "peer": peers}


@settings(max_examples=60, deadline=None)
@given(tun_configs())
def test_any_tun_config_converts_there_and_back(tmp_path_factory, data: dict) -> None:
    try:
        expected = meaning(config.parse(data))
    except ConfigError:
        return  # not a config in the first place (an own key among the peers, ...)
    assert meaning(round_trip(data, tmp_path_factory.mktemp("rt"))) == expected


_ini_keys = st.sampled_from(
    [*wg_quick.INTERFACE.values(), *wg_quick.PEER.values(), "Mode", "[Peer]", "[Interface]"]
)
_ini_line = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}", _ini_keys, st.text(max_size=40)),
    st.builds(
        lambda k, v: f"{k.lower()}={v}",
        _ini_keys,
        st.sampled_from(["0x10", "off", "1,2", "true", "a.b"]),
    ),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ini_line, max_size=12))
def test_hostile_files_give_a_config_or_one_located_error(lines: list[str]) -> None:
    text = "\n".join(["[Interface]", f"PrivateKey = {KEY_A}", *lines])
    try:
        c = config.load_source(config.source(text, "wg0.conf"))
    except ConfigError as e:
        message = str(e)
        assert message.startswith("wg0.conf") and message.isprintable()
        return
    assert c.interface.name == "wg0"


# ---------------------------------------------------------------------------
# In namespaces: `pyvpn up NAME.conf` against a pyvpn peer running from TOML


HOST_RESOLV = Path("/etc/resolv.conf")


@contextlib.contextmanager
def own_resolv_conf(ns: Namespace, state: Path) -> Iterator[str]:
    """The namespace's own /etc/resolv.conf and resolvconf.conf (`ip netns exec`
    bind-mounts each file of /etc/netns/NS over /etc), with a LAN's nameserver in
    it as resolvconf gives it; yields that resolv.conf. The resolvconf.conf keeps
    openresolv's state in `state` (not the host's /run/resolvconf) and runs no
    subscriber but libc; the signature line keeps openresolv from backing up a
    resolv.conf it did not write to /etc/resolv.conf.bak, which is the host's."""
    host, backup = HOST_RESOLV.read_bytes(), Path("/etc/resolv.conf.bak").exists()
    etc = Path("/etc/netns") / ns.name
    etc.mkdir(parents=True)
    try:
        (etc / "resolv.conf").write_text("# Generated by resolvconf\n")
        (etc / "resolvconf.conf").write_text(f"resolv_conf=/etc/resolv.conf\nstate_dir={state}\n")
        ns.run("resolvconf", "-a", "lan0", input="nameserver 192.0.2.53\n")
        yield ns.run("cat", "/etc/resolv.conf").stdout
    finally:
        shutil.rmtree(etc)
    assert HOST_RESOLV.read_bytes() == host
    assert Path("/etc/resolv.conf.bak").exists() == backup


def pair(tmp_path: Path, **b: object) -> tuple[str, dict, Path]:
    """A's name and TOML data (to write as wg-quick), and B's TOML file."""
    names = (device_name("pvwq", "a"), device_name("pvwq", "b"))
    path_a, path_b = write_pair_configs(tmp_path, "tun", names=names, interface_b=b)
    return names[0], tomllib.loads(path_a.read_text()), path_b


def write_ini(tmp_path: Path, name: str, a: dict, interface: str) -> Path:
    path = tmp_path / f"{name}.conf"
    path.write_text(
        f"[Interface]\nPrivateKey = {a['interface']['private_key']}\n"
        f"Address = {INNER_A}/24\nlistenport = 51820  # wg's keys in any case\n{interface}\n"
        f"[Peer]\nPublicKey = {a['peer'][0]['public_key']}\nAllowedIPs = {INNER_B}/32\n"
        f"Endpoint = {UNDERLAY_B}:51820\n"
    )
    path.chmod(0o600)
    return path


def test_up_a_wg_quick_file_with_hooks_and_dns(bed, tmp_path: Path) -> None:
    name, a, path_b = pair(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    ini = write_ini(
        tmp_path,
        name,
        a,
        "DNS = 10.10.0.53, lan.example\n"
        # Each hook proves its moment: PreUp before the device, PostUp after its
        # address, PreDown while it is there, PostDown once it is gone.
        f"PreUp = ! ip link show %i 2>/dev/null && echo %i > {marks}/pre_up\n"
        f"PostUp = ip -brief address show dev %i > {marks}/post_up\n"
        f"PostUp = wg show %i listen-port > {marks}/post_up_wg\n"  # the UAPI answers
        f"PreDown = ip link show %i > {marks}/pre_down\n"
        f"PostDown = ! ip link show %i 2>/dev/null && echo %i > {marks}/post_down\n",
    )
    with own_resolv_conf(bed.a, tmp_path / "resolvconf") as lan:
        assert "nameserver 192.0.2.53\n" in lan
        with start_pyvpn(bed.b, path_b), start_pyvpn(bed.a, ini) as peer_a:
            wait_reachable(bed.a, INNER_B)
            wait_reachable(bed.b, INNER_A)
            # The UAPI answers, and traffic flows, while PostUp still runs.
            done = marks / "post_up_wg"
            wait_for(peer_a, lambda: done.exists() and done.read_text() != "", "PostUp ran", 10)
            assert (marks / "pre_up").read_text() == f"{name}\n"
            assert f"{INNER_A}/24" in (marks / "post_up").read_text()
            assert (marks / "post_up_wg").read_text() == "51820\n"
            resolv = bed.a.run("cat", "/etc/resolv.conf").stdout
            assert "nameserver 10.10.0.53\n" in resolv and "search lan.example\n" in resolv
            assert "192.0.2.53" not in resolv  # -x: the tunnel's servers alone
            # reload reads the wg-quick file too.
            with ini.open("a") as f:
                f.write(f"[Peer]\nPublicKey = {PUB_C}\nAllowedIPs = 10.10.0.9/32\n")
            reload = pyvpn("reload", str(ini))
            assert reload.returncode == 0, reload.stderr
            peers = [p["public_key"] for p in pyvpn_status(name)["peers"]]
            assert sorted(peers) == sorted([a["peer"][0]["public_key"], PUB_C])
            assert peer_a.stop() == 0, peer_a.output()
            assert name in (marks / "pre_down").read_text()
            assert (marks / "post_down").read_text() == f"{name}\n"
            assert bed.a.run("cat", "/etc/resolv.conf").stdout == lan
            assert not bed.a.has_link(name)


@pytest.mark.parametrize("hook", ["PreUp", "PostUp"])
def test_a_failing_hook_stops_up_and_leaves_nothing(bed, tmp_path: Path, hook: str) -> None:
    name, a, _ = pair(tmp_path)
    ini = write_ini(
        tmp_path,
        name,
        a,
        f"DNS = 10.10.0.53\nPostDown = touch {tmp_path}/down\n{hook} = true\n{hook} = exit 3\n",
    )
    with own_resolv_conf(bed.a, tmp_path / "resolvconf") as lan:
        result = pyvpn("up", str(ini), netns=bed.a.name)
        assert result.returncode == 1, result.stderr
        assert (
            result.stderr.splitlines()[-1]
            == f"pyvpn: {name}: {hook} failed (exit status 3): exit 3"
        )
        assert not bed.a.has_link(name)
        assert bed.a.run("cat", "/etc/resolv.conf").stdout == lan
        assert not (tmp_path / "down").exists()  # as wg-quick: no PostDown for an up that failed
    assert sorted(leftovers()) == sorted(f"netns {ns.name}" for ns in bed.namespaces)


def test_a_file_without_a_private_key_takes_one_from_post_up(bed, tmp_path: Path) -> None:
    name, a, path_b = pair(tmp_path)
    key_file = tmp_path / "a.key"
    key_file.write_text(a["interface"]["private_key"] + "\n")
    key_file.chmod(0o600)
    ini = write_ini(tmp_path, name, a, f"PostUp = wg set %i private-key {key_file}\n")
    ini.write_text("".join(line for line in ini.open() if not line.startswith("PrivateKey")))
    with start_pyvpn(bed.b, path_b), start_pyvpn(bed.a, ini) as peer_a:
        wait_reachable(bed.a, INNER_B)
        wait_reachable(bed.b, INNER_A)
        public = keys.encode(keys.public_key(keys.decode(a["interface"]["private_key"])))
        assert pyvpn_status(name)["public_key"] == public
        # A reload from the same file keeps the key it does not give, as wg syncconf does.
        reload = pyvpn("reload", str(ini))
        assert reload.returncode == 0, reload.stderr
        assert pyvpn_status(name)["public_key"] == public
        wait_reachable(bed.a, INNER_B)
        assert peer_a.stop() == 0
    assert f"{ini}:1: PrivateKey: none: {name} makes and answers no handshakes" in (peer_a.output())


def test_save_config_writes_the_running_tunnel_back_in_its_format(bed, tmp_path: Path) -> None:
    name, a, path_b = pair(tmp_path, save_config=True, datapath="python")
    ini = write_ini(tmp_path, name, a, "SaveConfig = true\nPostUp = true\nDNS = 10.10.0.53\n")
    new_a, new_b = (keys.encode(keys.public_key(keys.generate_private_key())) for _ in "ab")
    with (
        own_resolv_conf(bed.a, tmp_path / "resolvconf"),
        start_pyvpn(bed.b, path_b) as peer_b,
        start_pyvpn(bed.a, ini) as peer_a,
    ):
        wait_reachable(bed.a, INNER_B)
        bed.a.run("ip", "address", "add", "10.10.5.1/24", "dev", name)  # saved as wg-quick does
        for ns, device, key in ((bed.a, name, new_a), (bed.b, peer_b.name, new_b)):
            ns.run(
                "wg", "set", device, "peer", key, "allowed-ips", "10.10.0.9/32",
                "endpoint", "198.18.0.9:4000", "persistent-keepalive", "15",
            )  # fmt: skip
        assert peer_a.stop() == 0, peer_a.output()
        assert peer_b.stop() == 0
    assert ini.stat().st_mode & 0o777 == 0o600
    saved = config.load(str(ini))
    assert saved.format == "wg-quick" and ini.read_text().startswith("[Interface]\n")
    assert [keys.encode(p.public_key) for p in saved.peers] == [a["peer"][0]["public_key"], new_a]
    added = saved.peers[1]
    assert (added.endpoint, added.persistent_keepalive) == (("198.18.0.9", 4000), 15)
    assert [str(n) for n in added.allowed_ips] == ["10.10.0.9/32"]
    c = saved.interface
    assert (c.save_config, c.dns, c.hooks, c.listen_port) == (
        True,
        ["10.10.0.53"],
        {"post_up": ["true"]},
        51820,
    )
    assert [str(x) for x in c.addresses] == [f"{INNER_A}/24", "10.10.5.1/24"]
    toml = config.load(str(path_b))
    assert toml.format == "toml" and toml.interface.datapath == "python"
    assert keys.encode(toml.peers[-1].public_key) == new_b


def test_pyvpn_and_wg_quick_itself_do_the_same_with_a_converted_file(bed, tmp_path: Path) -> None:
    """`pyvpn convert` writes a file that wg-quick (with wireguard-go) runs with the
    same hooks at the same moments and the same resolv.conf as `pyvpn up` does."""
    names = (device_name("pvwq", "a"), device_name("pvwq", "b"))
    log = tmp_path / "hooks.log"
    hooks = {
        hook: f"echo {hook} %i $(ip -brief link show %i 2>/dev/null | wc -l) >> {log}"
        for hook in ("pre_up", "post_up", "pre_down", "post_down")
    }  # the count says whether the device is there
    path_a, path_b = write_pair_configs(
        tmp_path,
        "tun",
        names=names,
        interface_a={"datapath": None, "dns": ["10.10.0.53", "lan"], **hooks},
    )
    ini = tmp_path / f"{names[0]}.conf"
    converted = pyvpn("convert", str(path_a), "-o", str(ini))
    assert converted.returncode == 0, converted.stderr
    seen = []
    with own_resolv_conf(bed.a, tmp_path / "resolvconf") as lan, start_pyvpn(bed.b, path_b):
        with start_pyvpn(bed.a, ini) as peer_a:
            wait_reachable(bed.a, INNER_B)
            seen.append(bed.a.run("cat", "/etc/resolv.conf").stdout)
            assert peer_a.stop() == 0
        seen.append(log.read_text())
        log.unlink()
        assert bed.a.run("cat", "/etc/resolv.conf").stdout == lan
        env = {
            "WG_QUICK_USERSPACE_IMPLEMENTATION": str(wireguard_go()),
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1",
        }
        try:
            bed.a.run("env", *(f"{k}={v}" for k, v in env.items()), "wg-quick", "up", str(ini))
            wait_reachable(bed.a, INNER_B)
            seen.append(bed.a.run("cat", "/etc/resolv.conf").stdout)
        finally:
            bed.a.run("wg-quick", "down", str(ini), check=False)
            uapi_socket(names[0]).unlink(missing_ok=True)
        seen.append(log.read_text())
        assert bed.a.run("cat", "/etc/resolv.conf").stdout == lan
    pyvpn_resolv, pyvpn_log, wg_quick_resolv, wg_quick_log = seen
    assert "nameserver 10.10.0.53\n" in pyvpn_resolv and "search lan\n" in pyvpn_resolv
    assert pyvpn_resolv == wg_quick_resolv
    name = names[0]
    assert (
        pyvpn_log == f"pre_up {name} 0\npost_up {name} 1\npre_down {name} 1\npost_down {name} 0\n"
    )
    assert pyvpn_log == wg_quick_log
