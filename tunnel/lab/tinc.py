"""tinc 1.0 as a bench contender, in router mode (L3) and switch mode (L2).

Switch mode is a learning switch over the tunnel, which makes it the one peer of
pyvpn's tap mode among the contenders. Each peer gets a config directory: its
RSA key pair from `tincd -K`, the other peer's host file, and a tinc-up script
that sets the device's address and MTU. Cipher and digest are set to AES-256
and SHA-256, as a deployment made today would set them, not tinc 1.0's
Blowfish and SHA-1 defaults.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .testbed import Daemon, run_command, wait_for

PORT = 655
READY = "Ready"
CIPHER = "aes-256-cbc"
DIGEST = "sha256"
# Outer bytes a data packet adds besides IP + UDP: the sequence number (4), CBC
# padding (1 to 16) and the truncated MAC (MACLength, 4 by default); the most.
DATA_OVERHEAD = 4 + 16 + 4


def version() -> str:
    # "tinc version 1.0.36 (built ...)"
    out = subprocess.run(["tincd", "--version"], capture_output=True, text=True).stdout
    words = out.split()
    return f"tinc {words[2]}" if len(words) > 2 else "tinc"


def make_peer(
    root: Path, *, name: str, device: str, mode: str, local: str, inner: str, mtu: int
) -> Path:
    """`name`'s config directory under `root`, with its key pair made."""
    directory = root / name
    (directory / "hosts").mkdir(parents=True)
    (directory / "tinc.conf").write_text(
        f"Name = {name}\nMode = {'router' if mode == 'tun' else 'switch'}\n"
        f"DeviceType = {mode}\nInterface = {device}\nAddressFamily = ipv4\n"
        f"BindToAddress = {local}\nPort = {PORT}\n"
    )
    subnet = f"Subnet = {inner}/32\n" if mode == "tun" else ""
    (directory / "hosts" / name).write_text(
        f"Address = {local}\nPort = {PORT}\nCipher = {CIPHER}\nDigest = {DIGEST}\n{subnet}"
    )
    up = directory / "tinc-up"
    up.write_text(
        f'#!/bin/sh\nip link set "$INTERFACE" mtu {mtu} up\n'
        f'ip addr add {inner}/24 dev "$INTERFACE"\n'
    )
    os.chmod(up, 0o755)
    # With no terminal, -K writes the keys where tinc.conf's directory says, asking nothing.
    run_command(["tincd", "-c", str(directory), "-K", "2048"])
    return directory


def connect(directory: Path, peer: Path) -> None:
    """`directory`'s tincd connects to `peer`'s; each gets the other's host file,
    whose public key the other end's authentication needs."""
    for this, other in ((directory, peer), (peer, directory)):
        host = (other / "hosts" / other.name).read_text()
        (this / "hosts" / other.name).write_text(host)
    with (directory / "tinc.conf").open("a") as conf:
        conf.write(f"ConnectTo = {peer.name}\n")


def argv(directory: Path) -> list[str]:
    """tincd in the foreground, logging to its output (-d1 names the connection's steps)."""
    return ["tincd", "-c", str(directory), "-D", "-d1", f"--pidfile={directory / 'pid'}"]


def wait_ready(daemon: Daemon, timeout: float = 20.0) -> None:
    wait_for(daemon, lambda: READY in daemon.output(), "its device", timeout)
