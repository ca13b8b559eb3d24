"""pyvpn under systemd: the unit template systemd itself accepts, the readiness
protocol a `Type=notify` unit waits for, and the drop-in that makes wireguard-tools'
wg-quick@.service run pyvpn-wg."""

import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tunnel.lab.testbed import (
    pyvpn_env,
    start_daemon,
    start_pyvpn,
    uapi_listening,
    write_pair_configs,
)

from ..conftest import ROOT

UNIT = ROOT / "configs" / "pyvpn@.service"
METRICS_UNIT = ROOT / "configs" / "pyvpn-metrics.service"


# Where the Debian package puts pyvpn's commands, which the units run; in this
# checkout they are in the .venv scripts/setup made.
PACKAGED = "/usr/bin/"
CHECKOUT = f"{ROOT}/.venv/bin/"


def verify(unit: Path, instance: Path) -> None:
    """`systemd-analyze verify` accepts the unit, its paths pointed at this checkout."""
    instance.write_text(unit.read_text().replace(PACKAGED, CHECKOUT))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(instance)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_unit_template_passes_systemd_analyze_verify(tmp_path):
    verify(UNIT, tmp_path / "pyvpn@tun-a.service")
    unit = configparser.ConfigParser(interpolation=None)
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "notify"
    # A bare name: /etc/pyvpn/%i.toml or /etc/wireguard/%i.conf (config.config_file).
    assert service["ExecStart"].endswith("pyvpn up %i")
    assert service["ExecReload"].endswith("pyvpn reload %i")


def test_ready_once_the_tunnel_is_up_and_stopping_at_shutdown(bed, tmp_path, monkeypatch):
    path_a, _ = write_pair_configs(tmp_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    with notify, start_pyvpn(bed.a, path_a) as a:
        ready = notify.recv(4096).decode().split("\n")
        # By READY=1 what depends on the tunnel can use it: device and UAPI are there.
        assert ready[0] == "READY=1"
        assert ready[1].startswith(f"STATUS={a.name} up: tun mode, UDP port 51820")
        assert bed.a.has_link(a.name) and uapi_listening(a.name)
        a.proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert a.proc.wait(timeout=10) == 0


DROP_IN = ROOT / "configs" / "wg-quick@.service.d" / "pyvpn.conf"
WG_QUICK_UNIT = Path("/lib/systemd/system/wg-quick@.service")  # from wireguard-tools


def verify_wg_quick_with(drop_in: str, units: Path) -> subprocess.CompletedProcess:
    """systemd-analyze verify of wireguard-tools' wg-quick@wg0 with `drop_in` beside it."""
    (units / "wg-quick@.service.d").mkdir(parents=True)
    shutil.copy(WG_QUICK_UNIT, units)
    (units / "wg-quick@.service.d" / "pyvpn.conf").write_text(drop_in)
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "wg-quick@wg0.service")],
        capture_output=True,
        text=True,
        check=False,
        # Only these units (and systemd's own, after the colon): the drop-in is read.
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"},
    )


def test_wg_quick_drop_in_points_wg_quick_at_pyvpn_wg(tmp_path):
    text = DROP_IN.read_text()
    result = verify_wg_quick_with(text.replace(PACKAGED, CHECKOUT), tmp_path / "good")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # The check reads the drop-in: a broken one is reported.
    broken = verify_wg_quick_with(text.replace("Environment=", "Environmen="), tmp_path / "bad")
    assert "pyvpn.conf" in broken.stderr and "Unknown key" in broken.stderr
    unit = configparser.ConfigParser(interpolation=None)
    unit.read_string(text)
    variable, _, program = unit["Service"]["Environment"].partition("=")
    assert variable == "WG_QUICK_USERSPACE_IMPLEMENTATION"
    assert program == "/usr/bin/pyvpn-wg"
    # The console script pyproject installs, in this checkout's .venv.
    installed = Path(program.replace(PACKAGED, CHECKOUT))
    assert os.access(installed, os.X_OK)
    done = subprocess.run([str(installed), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("pyvpn-wg")


def test_metrics_unit_passes_systemd_analyze_verify(tmp_path):
    verify(METRICS_UNIT, tmp_path / METRICS_UNIT.name)
    unit = configparser.ConfigParser(interpolation=None)
    unit.read_string(METRICS_UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].endswith("pyvpn metrics --listen 127.0.0.1:9586")


def test_metrics_ready_once_it_listens(bed, tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    argv = [sys.executable, "-m", "tunnel", "metrics", "--listen", "127.0.0.1:9586"]
    env = {**pyvpn_env(), "NOTIFY_SOCKET": str(tmp_path / "notify")}
    with notify, start_daemon(bed.a, argv, "metrics", env) as exporter:
        assert notify.recv(4096) == b"READY=1"
        # By READY=1 it accepts connections.
        assert bed.a.run("ss", "-Htln", "sport = :9586").stdout.strip()
        exporter.proc.send_signal(signal.SIGTERM)
        assert exporter.proc.wait(timeout=10) == 0
