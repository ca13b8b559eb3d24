"""`pyvpn fleet init|admit|revoke|list` as an administrator runs them, against a
real etcd on loopback; and the fleet's settings, whose errors are one line
naming the file and the key, exit status 2."""

import base64
import ipaddress
import json
import os
import stat
import tomllib
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunnel.control.config import ConfigError, load
from tunnel.fleet import record, settings
from tunnel.fleet.record import Admission
from tunnel.fleet.registry import Registry
from tunnel.fleet.roster import Layout
from tunnel.lab.etcd import Etcd, etcd_problem
from tunnel.protocol import keys

from ..conftest import needs, pyvpn

KEY = "pTSTFXYLKS16g2dCs0+OhkrTM+pWGgRJj7TiWsPlB5I="


@pytest.fixture(scope="module")
def etcd():
    with Etcd() as server:
        yield server


def fleet(tmp_path: Path, etcd: Etcd, *extra: str) -> Path:
    directory = tmp_path / "office"
    done = pyvpn("fleet", "init", str(directory), "--registry", etcd.url, *extra)
    assert done.returncode == 0, done.stderr
    return directory


def listed(directory: Path) -> list[list[str]]:
    done = pyvpn("fleet", "list", str(directory))
    assert done.returncode == 0, done.stderr
    return [line.split() for line in done.stdout.splitlines()]


@needs(etcd_problem())
def test_init_admit_list_revoke(tmp_path, etcd):
    directory = fleet(tmp_path, etcd, "--stun", "192.0.2.1:3478")
    assert stat.S_IMODE((directory / "fleet.key").stat().st_mode) == 0o600
    fleet_toml = tomllib.loads((directory / "fleet.toml").read_text())["fleet"]
    assert fleet_toml["registry"] == [etcd.url] and fleet_toml["prefix"] == "/pyvpn/office"

    host = tmp_path / "a.toml"
    done = pyvpn("fleet", "admit", str(directory), "a", "--address", "10.7.0.1/24",
                 "--subnet", "192.168.7.0/24", "--out", str(host))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(host.stat().st_mode) == 0o600
    config = load(str(host))  # ready for `pyvpn up`: its key and the fleet's table
    assert settings.of_config(config) == settings.read_fleet_file(str(directory))
    public = keys.encode(keys.public_key(config.interface.private_key))
    assert public in done.stdout

    other = keys.encode(keys.public_key(keys.generate_private_key()))
    done = pyvpn("fleet", "admit", str(directory), "b", "--address", "10.7.0.2/24",
                 "--mode", "tap", "--public-key", other)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert listed(directory) == [
        ["HOST", "ADDRESS", "MODE", "ONLINE", "ENDPOINTS"],
        ["a", "10.7.0.1/24", "tun", "no", "-"],
        ["b", "10.7.0.2/24", "tap", "no", "-"],
    ]

    done = pyvpn("fleet", "revoke", str(directory), "b")
    assert done.returncode == 0 and other in done.stdout
    assert [row[0] for row in listed(directory)] == ["HOST", "a"]
    done = pyvpn("fleet", "revoke", str(directory), "b")
    assert (done.returncode, done.stderr) == (
        1,
        "pyvpn: fleet revoke: no host named b is admitted\n",
    )


@needs(etcd_problem())
def test_admit_refuses_an_address_or_key_already_taken(tmp_path, etcd):
    directory = fleet(tmp_path, etcd, "--prefix", "/pyvpn/taken")
    key = keys.encode(keys.public_key(keys.generate_private_key()))
    admit = ["fleet", "admit", str(directory)]
    assert pyvpn(*admit, "a", "--address", "10.8.0.1/24", "--public-key", key).returncode == 0
    done = pyvpn(*admit, "b", "--address", "10.8.0.1/24", "--out", str(tmp_path / "b.toml"))
    assert (done.returncode, done.stderr) == (
        1,
        "pyvpn: fleet admit: 10.8.0.1 is a's address already\n",
    )
    assert not (tmp_path / "b.toml").exists()
    done = pyvpn(*admit, "c", "--address", "10.8.0.3/24", "--public-key", key)
    assert "that public key is a's already" in done.stderr
    done = pyvpn(*admit, "d", "--address", "10.8.0.4/24")
    assert "without --public-key, --out FILE" in done.stderr


@needs(etcd_problem())
def test_a_record_the_fleet_key_did_not_sign_is_refused_and_counted(tmp_path, etcd):
    directory = fleet(tmp_path, etcd, "--prefix", "/pyvpn/forged")
    fleet_settings = settings.read_fleet_file(str(directory))
    forger = Ed25519PrivateKey.generate()
    forged = Admission("mallory", keys.public_key(keys.generate_private_key()),
                       ipaddress.ip_interface("10.9.0.66/24"), (), "tun", 99)  # fmt: skip
    registry = Registry(fleet_settings)
    try:
        registry.put(Layout(fleet_settings.prefix).host("mallory"), record.sign(forged, forger))
    finally:
        registry.close()
    done = pyvpn("fleet", "list", str(directory))
    assert done.stdout.splitlines()[1:] == ["refused: forged 1"]


def test_init_refuses_a_directory_that_holds_a_fleet(tmp_path):
    args = ("fleet", "init", str(tmp_path), "--registry", "http://127.0.0.1:2379")
    assert pyvpn(*args).returncode == 0
    key = (tmp_path / "fleet.key").read_text()
    done = pyvpn(*args)
    assert done.returncode == 1 and "a fleet is already there" in done.stderr
    assert (tmp_path / "fleet.key").read_text() == key


@needs(etcd_problem())
def test_a_registry_that_does_not_answer_is_one_line_exit_1(tmp_path):
    with Etcd() as gone:
        pass  # its port, free again: nothing answers there
    directory = tmp_path / "f"
    assert pyvpn("fleet", "init", str(directory), "--registry", gone.url).returncode == 0
    done = pyvpn("fleet", "list", str(directory))
    assert done.returncode == 1
    assert done.stderr.startswith(f"pyvpn: fleet list: no registry answered: {gone.url}")
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "table, key, problem",
    [
        ('registry = "ftp://10.0.0.1:2379"', "fleet.registry[0]", "is not an etcd client URL"),
        ('registry = ["http://10.0.0.1"]', "fleet.registry[0]", "has no port"),
        ("registry = []", "fleet.registry", "names no etcd client URL"),
        ('prefix = "pyvpn"', "fleet.prefix", "is not an absolute key path"),
        ('prefix = "/pyvpn/../x"', "fleet.prefix", "is not an absolute key path"),
        ('public_key = "abc"', "fleet.public_key", "not a key"),
        ('stun = "stun.example.net"', "fleet.stun", "is not host:port"),
        ('relay = "turn:user@192.0.2.1:3478"', "fleet.relay", "is not turn:USER:PASSWORD"),
        ('ca_file = "missing.pem"', "fleet.ca_file", "is no file"),
        ('user = "office"', "fleet.user", "needs both user and password_file"),
        ("colour = 1", "fleet.colour", "unknown key"),
    ],
)
def test_a_bad_fleet_file_is_one_line_naming_file_and_key(tmp_path, table, key, problem):
    good = {
        "registry": '["http://10.0.0.1:2379"]',
        "prefix": '"/pyvpn/a"',
        "public_key": f'"{KEY}"',
    }
    name = table.split(" = ")[0]
    lines = [f"{k} = {v}" for k, v in good.items() if k != name] + [table]
    (tmp_path / "fleet.toml").write_text("[fleet]\n" + "\n".join(lines) + "\n")
    done = pyvpn("fleet", "list", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith(f"pyvpn: {tmp_path / 'fleet.toml'}: {key}: ")
    assert problem in done.stderr
    assert done.stderr.count("\n") == 1


def test_up_reads_the_fleet_table_and_refuses_a_bad_one_before_making_anything(tmp_path):
    name = f"pvflt{os.getpid()}"[:15]
    path = tmp_path / "host.toml"
    path.write_text(
        f'[interface]\nname = "{name}"\nprivate_key = "{KEY}"\n\n'
        f'[fleet]\nregistry = ["http://10.0.0.1:2379"]\nprefix = "/pyvpn/a"\n'
        f'public_key = "{KEY}"\nstun = "no port"\n'
    )
    config = load(str(path))
    assert config.fleet is not None and config.fleet["stun"] == "no port"
    with pytest.raises(ConfigError, match=r"host.toml: fleet.stun: "):
        settings.of_config(config)
    done = pyvpn("up", str(path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "fleet.stun" in done.stderr
    assert not Path(f"/sys/class/net/{name}").exists()


def etcd_call(url: str, path: str, payload: dict) -> dict:
    request = urllib.request.Request(f"{url}/v3{path}", data=json.dumps(payload).encode())
    with urllib.request.urlopen(request, timeout=5) as answer:
        found: dict = json.load(answer)
        return found


@needs(etcd_problem())
def test_an_etcd_with_authentication_takes_the_fleets_user(tmp_path):
    """etcd's RBAC: the fleet's user may write under the fleet's prefix only."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    with Etcd() as server:
        url = server.url
        for user, password in (("root", "secret"), ("office", "office-password")):
            etcd_call(url, "/auth/user/add", {"name": user, "password": password})
        etcd_call(url, "/auth/user/grant", {"user": "root", "role": "root"})
        etcd_call(url, "/auth/role/add", {"name": "fleet"})
        permission = {"permType": "READWRITE", "key": b64("/pyvpn/office/"),
                      "range_end": b64("/pyvpn/office0")}  # fmt: skip
        etcd_call(url, "/auth/role/grant", {"name": "fleet", "perm": permission})
        etcd_call(url, "/auth/user/grant", {"user": "office", "role": "fleet"})
        etcd_call(url, "/auth/enable", {})

        directory = tmp_path / "office"
        assert pyvpn("fleet", "init", str(directory), "--registry", url).returncode == 0
        done = pyvpn("fleet", "list", str(directory))
        assert (done.returncode, done.stderr) == (
            1, f"pyvpn: fleet list: no registry answered: {url}: etcdserver: user name is empty\n"
        )  # fmt: skip
        (directory / "password").write_text("office-password\n")
        with open(directory / "fleet.toml", "a") as f:
            f.write('user = "office"\npassword_file = "password"\n')
        host = tmp_path / "a.toml"
        done = pyvpn("fleet", "admit", str(directory), "a", "--address", "10.7.0.1/24",
                     "--out", str(host))  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert listed(directory)[1][:2] == ["a", "10.7.0.1/24"]
        # The host's config names the same user and the password file where it is.
        written = settings.of_config(load(str(host)))
        assert written is not None and written.user == "office"
        assert written.password_file == str(directory / "password")
