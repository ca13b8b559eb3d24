"""Nebula as a bench contender: a CA, a certificate per peer, and a static host map.

Two peers that know each other's underlay address from `static_host_map`, as a
WireGuard pair knows its endpoint: no lighthouse, no hole punching, so what is
measured is Nebula's data path. Its firewall lets everything through, as a
WireGuard pair's allowed IPs do. The config is JSON, which Nebula's YAML reader
takes as it is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .testbed import Daemon, run_command, wait_for

PORT = 4242
READY = "Nebula interface is active"
# Outer bytes a data packet adds besides IP + UDP: Nebula's 16-byte header and the
# AES-GCM tag (16).
DATA_OVERHEAD = 32
# scripts/setup unpacks Debian sid's build here; else the one on PATH.
_VENV_NEBULA = Path(sys.prefix) / "contenders/nebula/usr/bin"


def binary(tool: str) -> str:
    """`nebula` or `nebula-cert`: the venv's sid build, else the system's."""
    path = _VENV_NEBULA / tool
    return str(path) if os.access(path, os.X_OK) else tool


def version() -> str:
    """The Debian package version scripts/setup recorded, else the binary's own."""
    stamp = _VENV_NEBULA.parents[1] / "VERSION"
    if stamp.is_file() and binary("nebula").startswith(str(_VENV_NEBULA)):
        return f"Nebula {stamp.read_text().strip()}"
    out = run_command([binary("nebula"), "-version"]).stdout  # "Version: 1.6.1"
    return f"Nebula {out.split()[-1]}" if out.split() else "Nebula"


def make_certs(directory: Path, hosts: dict[str, str]) -> None:
    """A CA and, for each name, a certificate for its tunnel address ("10.10.0.1/24")."""
    crt, key = str(directory / "ca.crt"), str(directory / "ca.key")
    run_command([binary("nebula-cert"), "ca", "-name", "pyvpn-bench", "-duration", "48h",
                 "-out-crt", crt, "-out-key", key])  # fmt: skip
    ca = ["-ca-crt", crt, "-ca-key", key]
    for name, cidr in hosts.items():
        run_command([binary("nebula-cert"), "sign", "-name", name, "-ip", cidr, *ca,
                     "-out-crt", str(directory / f"{name}.crt"),
                     "-out-key", str(directory / f"{name}.key")])  # fmt: skip


def write_config(
    directory: Path, *, name: str, device: str, local: str, peer_inner: str, peer: str, mtu: int
) -> Path:
    """One peer's config: its certificate, the other peer at its underlay address."""
    anything = [{"port": "any", "proto": "any", "host": "any"}]
    config = {
        "pki": {
            "ca": str(directory / "ca.crt"),
            "cert": str(directory / f"{name}.crt"),
            "key": str(directory / f"{name}.key"),
        },
        "static_host_map": {peer_inner: [f"{peer}:{PORT}"]},
        "lighthouse": {"am_lighthouse": False, "hosts": []},
        "listen": {"host": local, "port": PORT},
        "punchy": {"punch": False},
        "tun": {"dev": device, "mtu": mtu},
        "logging": {"level": "info"},
        "firewall": {"outbound": anything, "inbound": anything},
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def wait_ready(daemons: list[Daemon], timeout: float = 20.0) -> None:
    for daemon in daemons:
        wait_for(daemon, lambda d=daemon: READY in d.output(), "its interface", timeout)
