"""The command line as a user meets it: keys, config errors, usage errors."""

import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import tomllib

import pytest

from tunnel import cli
from tunnel.cli import restart_needed
from tunnel.control.config import parse
from tunnel.control.show import render
from tunnel.daemon import choose_datapath
from tunnel.lab.testbed import device_name, start_wireguard_go
from tunnel.protocol import keys

from .conftest import ROOT, pyvpn, uapi_listener


def test_genkey_pubkey_match_wireguard_tools():
    private = pyvpn("genkey").stdout.strip()
    ours = pyvpn("pubkey", input=private + "\n").stdout.strip()
    theirs = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True
    ).stdout.strip()
    assert ours == theirs and len(keys.decode(ours)) == 32
    wg_private = subprocess.run(["wg", "genkey"], capture_output=True, text=True).stdout
    assert (
        pyvpn("pubkey", input=wg_private).stdout.strip()
        == subprocess.run(
            ["wg", "pubkey"], input=wg_private, capture_output=True, text=True
        ).stdout.strip()
    )


def test_version_is_the_installed_one():
    result = pyvpn("--version")
    assert result.returncode == 0
    assert result.stdout == f"pyvpn {importlib.metadata.version('pyvpn')}\n"


def test_genpsk_is_32_random_bytes():
    a, b = pyvpn("genpsk").stdout.strip(), pyvpn("genpsk").stdout.strip()
    assert len(keys.decode(a)) == 32 and a != b


def test_pubkey_rejects_garbage_in_one_line():
    result = pyvpn("pubkey", input="not a key")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not a private key" in result.stderr


def test_unknown_command_is_one_line_usage_error():
    result = pyvpn("upp", "x.toml")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "invalid choice" in result.stderr


GOOD_KEY = keys.encode(bytes(range(32)))
PEER_KEY = keys.encode(keys.public_key(bytes(range(1, 33))))


def config(interface: str = "", peer: str = "") -> str:
    return (
        f'[interface]\nname = "pvcfg{os.getpid() % 10000}"\nprivate_key = "{GOOD_KEY}"\n'
        f'{interface}\n[[peer]]\npublic_key = "{PEER_KEY}"\n{peer}\n'
    )


BAD_CONFIGS = [
    ("interface.listen_port", config('listen_port = "abc"'), "whole number"),
    ("interface.listen_port", config("listen_port = 70000"), "0 to 65535"),
    ("interface.mode", config('mode = "tunnel"'), "one of tun, tap"),
    ("interface.private_key", config().replace(GOOD_KEY, "Zm9v"), "not a key"),
    ("interface.address[0]", config('address = ["10.0.0.300/24"]'), "not an address"),
    ("interface.mtu", config("mtu = 100"), "576"),
    ("interface.mtu", config("mtu = 65450"), "576 to 65407"),
    ("interface.bridge", config('bridge = "br0"'), "only a tap interface"),
    ("interface.fwmark", config("fwmark = 0x100000000"), "0 to 4294967295"),
    (
        "interface.fwmark",
        config("fwmark = 254", 'allowed_ips = ["0.0.0.0/0"]'),
        "the kernel's main routing table",
    ),
    (
        "interface.name",
        config().replace('name = "pvcfg', 'name = "far/too/long/a/name'),
        "valid device name",
    ),
    # A trailing newline is no part of a name (patterns match whole, not up to a "\n").
    ("interface.name", config().replace('"\nprivate_key', '\\n"\nprivate_key'), "valid device"),
    ("interface.dns[0]", config('dns = "lan\\n"'), "neither an IP address nor a search domain"),
    # resolv.conf would take the newline for a line of its own.
    (
        "interface.dns[0]",
        config('dns = "fe80::1%x\\nnameserver 203.0.113.66"'),
        "not a nameserver's IP address",
    ),
    ("peer[0].allowed_macs[0]", config(peer='allowed_macs = "02:00:00:00:00:01\\n"'), "not a MAC"),
    # User text in an error is quoted, its escapes shown rather than sent to the terminal.
    ("'interface.\\x1b[2Jred'", config('"\\u001b[2Jred" = 1'), "unknown key"),
    ("interface.table", config('table = "sometimes"'), '"auto", "off", "main" or a table'),
    ("interface.workers", config('workers = "many"'), '"auto" or a whole number from 0 to 64'),
    ("interface.workers", config("workers = 65"), "from 0 to 64, got 65"),
    ("interface.table", config("table = 255"), "the kernel's local table"),
    ("interface.colour", config('colour = "blue"'), "unknown key"),
    ("peer[0].endpoint", config(peer='endpoint = "10.0.0.1"'), "host:port"),
    ("peer[0].allowed_ips[0]", config(peer='allowed_ips = ["banana"]'), "not a network"),
    ("peer[0].public_key", config().replace(PEER_KEY, GOOD_KEY + "x"), "not a key"),
    ("peer[0].public_key", config().replace(PEER_KEY, "A" * 43 + "="), "low-order point"),
    ("peer[0].allowed_macs[0]", config(peer='allowed_macs = ["nope"]'), "not a MAC address"),
    ("peer[0].allowed_macs[0]", config(peer='allowed_macs = ["01:00:5e:00:00:01"]'), "group"),
    ("peer[0].persistent_keepalive", config(peer="persistent_keepalive = -1"), "whole number"),
    ("interface", "[[peer]]\n", "missing [interface]"),
    ("not valid TOML", "[interface\n", "not valid TOML"),
]


@pytest.mark.parametrize(("key", "text", "problem"), BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_one_line_exit_2_and_leaves_nothing(bed, tmp_path, key, text, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    before = bed.a.run("ip", "-o", "link").stdout
    result = pyvpn("up", str(path), netns=bed.a.name)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.removesuffix("\n").isprintable(), result.stderr
    assert result.stderr.startswith(f"pyvpn: {path}: ") and key in result.stderr
    assert problem in result.stderr
    assert bed.a.run("ip", "-o", "link").stdout == before
    assert not os.path.exists(f"/var/run/wireguard/pvcfg{os.getpid() % 10000}.sock")


def test_missing_config_file(tmp_path):
    result = pyvpn("up", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert (
        result.stderr
        == f"pyvpn: {tmp_path / 'nope.toml'}: cannot read: No such file or directory\n"
    )


def test_world_readable_key_file_warns(tmp_path):
    (tmp_path / "a.key").write_text(GOOD_KEY + "\n")
    (tmp_path / "a.key").chmod(0o644)
    from tunnel.control.config import load

    path = tmp_path / "a.toml"
    path.write_text(config().replace(f'private_key = "{GOOD_KEY}"', 'private_key_file = "a.key"'))
    loaded = load(str(path))
    assert loaded.interface.private_key == bytes(range(32))
    assert any("accessible by others" in w for w in loaded.warnings)


@pytest.mark.xdist_group("machine-wide")  # every tunnel's socket, /etc: one such test at a time
def test_show_leaves_wireguard_gos_tunnels_to_wg(bed):
    """A wireguard-go device shares /var/run/wireguard: `pyvpn show` lists the pyvpn
    tunnels beside it, and names it plainly when asked for it."""
    name = device_name("pvwgo", "a")
    with start_wireguard_go(bed.a, name, keys.generate_private_key(), 0):
        everything = pyvpn("show", "--json")
        assert everything.returncode == 0 and everything.stderr == ""
        assert name not in [s["name"] for s in json.loads(everything.stdout)]
        assert pyvpn("show").returncode == 0
        one = pyvpn("show", name)
        assert one.returncode == 1
        assert one.stderr == f"pyvpn: {name} is not a pyvpn tunnel: wg show {name}\n"


# What `pyvpn show` and `down` do not wait for, only `up` and the key commands
# need: pyroute2 costs 0.16 s to import, the crypto stack (and the core that
# needs it) 0.1 s, importlib.metadata (read for --version) 0.03 s.
DAEMON_ONLY = ("pyroute2", "cryptography", "nacl", "tunnel.core", "importlib.metadata")


# What only `pyvpn demo` and `pyvpn bench` load: the lab and the [bench] extra,
# which `pip install pyvpn` leaves out.
LAB_ONLY = ("tunnel.lab", "rich", "matplotlib")


def test_the_command_line_loads_without_the_daemons_stack():
    """A hub's `pyvpn show` waits for every import of the command line first."""
    check = "import sys, tunnel.cli; print(*sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    modules = loaded.stdout.split()
    assert "tunnel.cli" in modules
    assert [m for m in modules if m.startswith(DAEMON_ONLY + LAB_ONLY)] == []


@pytest.mark.parametrize(
    "argv",
    [["show", "--json"], ["up", "/nonexistent/pyvpn-x.toml"], ["metrics", "--listen", "x"],
     ["genkey"], ["convert", "/nonexistent/x.conf"], ["up", "--help"]],
)  # fmt: skip
def test_the_tunnels_commands_never_load_the_lab(argv):
    """The runtime (`pip install pyvpn`) has no rich, matplotlib or lab to load."""
    check = (
        "import sys, tunnel.cli\n"
        "try:\n    tunnel.cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(*sys.modules, file=sys.stderr)"
    )
    run = subprocess.run([sys.executable, "-c", check, *argv], capture_output=True, text=True)
    modules = run.stderr.split()
    assert "tunnel.cli" in modules
    assert [m for m in modules if m.startswith(LAB_ONLY)] == []


# What a Python without the [bench] extra finds: no rich, no matplotlib.
WITHOUT_LAB = "import sys; sys.modules.update(rich=None, matplotlib=None); "


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_the_lab_without_its_extra_says_what_to_install(command):
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_LAB + "import tunnel.cli; sys.exit(tunnel.cli.main())",
         command, "--time", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == f"pyvpn: {command} needs rich, matplotlib: pip install 'pyvpn[bench]'\n"


def test_help_without_the_lab_still_names_its_commands():
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_LAB + "import tunnel.cli; tunnel.cli.main()", "--help"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0 and run.stderr == ""
    assert "demo" in run.stdout and "bench" in run.stdout


def test_the_lab_extra_is_pyprojects():
    """cli.LAB_EXTRA names what pyproject.toml's [bench] extra installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bench = project["optional-dependencies"]["bench"]
    assert [re.match(r"[\w.-]+", r).group() for r in bench] == list(cli.LAB_EXTRA)
    assert not {re.match(r"[\w.-]+", r).group() for r in project["dependencies"]} & set(
        cli.LAB_EXTRA
    )


def test_a_reader_that_goes_away_gets_no_traceback():
    """`pyvpn show | head`: the rest of the output has nowhere to go."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        # Buffered, as on a terminal-less run: the write then fails at the flush.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        result = subprocess.run(
            [sys.executable, "-m", "tunnel", "genkey"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (128 + signal.SIGPIPE, b"")


SNAPSHOT = {
    "name": "",  # the test's
    "mode": "tun",
    "public_key": GOOD_KEY,
    "listen_port": 51820,
    "fwmark": 0,
    "table": "auto",
    "full_tunnel": [],
    "datapath": "native",
    "mtu": 1420,
    "addresses": ["10.9.0.1/24"],
    "bridge": None,
    "drops": {},
    "peers": [
        {
            "public_key": GOOD_KEY,
            "endpoint": "192.0.2.7:51820",
            "endpoint_name": None,
            "allowed_ips": ["10.9.0.2/32"],
            "latest_handshake": None,
            "rx_bytes": 2048,
            "tx_bytes": 10,
            "persistent_keepalive": 25,
            "drops": {"replay_or_forged": 3},
        }
    ],
}


@pytest.mark.xdist_group("machine-wide")  # every tunnel's socket, /etc: one such test at a time
def test_show_renders_what_a_daemon_from_before_get_pyvpn_text_sends():
    """After an upgrade, a tunnel started before it refuses get=pyvpn_text
    (EPROTO) and still answers get=pyvpn: `pyvpn show` prints the same text."""
    asked: list[str] = []

    def serve(listener: socket.socket, name: str) -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                operation = conn.recv(4096).decode().split("\n")[0]
                asked.append(operation)
                snapshot = {**SNAPSHOT, "name": name}
                reply = (
                    f"json={json.dumps(snapshot)}\nerrno=0"
                    if operation == "get=pyvpn"
                    else "errno=71"
                )
                conn.sendall(reply.encode() + b"\n\n")

    with uapi_listener("pvold") as (name, listener):
        server = threading.Thread(target=serve, args=(listener, name), daemon=True)
        server.start()
        try:
            result = pyvpn("show", name)
        finally:
            server.join(5)
    assert asked == ["get=pyvpn_text", "get=pyvpn"]
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == render({**SNAPSHOT, "name": name}) + "\n"
    assert "  transfer: 2.00 KiB received, 10 B sent\n  persistent keepalive: every 25" in (
        result.stdout
    )
    assert "  dropped: replay_or_forged 3" in result.stdout


def test_show_names_the_crypto_workers_beside_the_io_worker():
    assert "  mode: tun, data plane: native, mtu: 1420\n" in render(SNAPSHOT)
    text = render({**SNAPSHOT, "crypto_workers": 2})
    assert "  mode: tun, data plane: native (2 crypto workers), mtu: 1420\n" in text
    text = render({**SNAPSHOT, "crypto_workers": 1})
    assert "data plane: native (1 crypto worker)," in text


def as_nobody(*argv: str) -> tuple[int, str, str]:
    """`pyvpn ARGV` as a user other than root (nobody, uid 65534) runs it: its exit
    status, stdout and stderr. In a forked child, since the interpreter is root's
    alone to start (it lives under /root)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    child = os.fork()
    if child == 0:
        status = 99
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            with open(1, "w", closefd=False) as out, open(2, "w", closefd=False) as err:
                sys.stdout, sys.stderr = out, err
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                status = cli.main(list(argv))
        finally:
            os._exit(status)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as out, os.fdopen(err_r) as err:
        stdout, stderr = out.read(), err.read()
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status), stdout, stderr


@pytest.mark.xdist_group("machine-wide")  # every tunnel's socket, /etc: one such test at a time
def test_a_user_not_root_is_told_permission_denied():
    """A tunnel's socket is root's (mode 0700), as wireguard-go's is: another user's
    show and down are refused there, and say so, as wg does, rather than that the
    tunnel is not running or, for `pyvpn show`, nothing at all."""
    with uapi_listener("pvperm") as (name, _):
        denied = f"pyvpn: {name}: Permission denied\n"
        assert as_nobody("show", name) == (1, "", denied)
        assert as_nobody("down", name) == (1, "", denied)
        status, stdout, stderr = as_nobody("show")
        assert (status, stdout) == (1, "") and denied in stderr


def test_down_unknown_tunnel():
    result = pyvpn("down", "pvnosuch")
    assert (
        result.returncode == 1 and result.stderr == "pyvpn: no tunnel named pvnosuch is running\n"
    )


def test_reload_names_each_setting_only_a_restart_applies():
    config = parse(
        {
            "interface": {
                "mode": "tap",
                "private_key": keys.encode(keys.generate_private_key()),
                "mtu": 1300,
                "bridge": "br1",
                "mac_ageing": 60,
                "user": "nobody",
                "workers": 2,
            }
        }
    )
    running = {"mtu": 1420, "table": "auto", "datapath": choose_datapath(config)}
    # A daemon of an older pyvpn reports fewer settings: only those are compared.
    assert restart_needed(config, running) == [("mtu", "1420", "1300")]
    running |= {"addresses": [], "bridge": "br0", "user": None, "mac_ageing": 300.0}
    running |= {"crypto_workers": 0}
    assert restart_needed(config, running) == [
        ("mtu", "1420", "1300"),
        ("bridge", "br0", "br1"),
        ("user", "root", "nobody"),
        ("mac_ageing", "300", "60"),
        *([("workers", "0", "2")] if running["datapath"] == "native" else []),
    ]
