"""tinc 1.0 as a bench contender, in router mode (L3) and switch mode (L2).

Switch mode is a learning switch over the tunnel, which makes it the one peer of
pyvpn's tap mode among the contenders. Each peer gets a config directory: its
RSA key pair from `tincd -K`, the other peer's host file, and a tinc-up script
that sets the device's address and MTU. Cipher and digest are set to AES-256
and SHA-256, as a deployment made today would set them, not tinc 1.0's
Blowfish and SHA-1 defaults.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from .testbed import Daemon, Namespace, run_command, start_daemon, wait_for

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
    root: Path,
    *,
    name: str,
    device: str,
    mode: str,
    local: str | None,
    inner: str | None,
    mtu: int,
    bridge: str | None = None,
    pmtu: int | None = None,
) -> Path:
    """`name`'s config directory under `root`, with its key pair made.

    `local`: the one address it listens on (None: every address; whoever connects
    names the address, see connect). `inner`: its device's address, if any.
    `bridge`: the bridge its device becomes a port of. `pmtu`: the path MTU to
    every node, set rather than discovered: while tinc discovers it, a packet
    larger than the MTU found so far goes over the TCP connection instead."""
    directory = root / name
    (directory / "hosts").mkdir(parents=True)
    bind = f"BindToAddress = {local}\n" if local else ""
    (directory / "tinc.conf").write_text(
        f"Name = {name}\nMode = {'router' if mode == 'tun' else 'switch'}\n"
        f"DeviceType = {mode}\nInterface = {device}\nAddressFamily = ipv4\n{bind}Port = {PORT}\n"
    )
    address = f"Address = {local}\n" if local else ""
    subnet = f"Subnet = {inner}/32\n" if mode == "tun" else ""
    fixed = f"PMTUDiscovery = no\nPMTU = {pmtu}\n" if pmtu else ""
    (directory / "hosts" / name).write_text(
        f"{address}Port = {PORT}\nCipher = {CIPHER}\nDigest = {DIGEST}\n{subnet}{fixed}"
    )
    up = directory / "tinc-up"
    lines = [f'ip link set "$INTERFACE" mtu {mtu} up']
    if inner:
        lines.append(f'ip addr add {inner}/24 dev "$INTERFACE"')
    if bridge:
        lines.append(f'ip link set "$INTERFACE" master {bridge}')
    up.write_text("#!/bin/sh\n" + "\n".join(lines) + "\n")
    os.chmod(up, 0o755)
    # With no terminal, -K writes the keys where tinc.conf's directory says, asking nothing.
    run_command(["tincd", "-c", str(directory), "-K", "2048"])
    return directory


def connect(directory: Path, peer: Path, address: str | None = None) -> None:
    """`directory`'s tincd connects to `peer`'s, at `address` (default: the one in
    peer's host file); each gets the other's host file, whose public key the
    other end's authentication needs."""
    for this, other in ((directory, peer), (peer, directory)):
        host = (other / "hosts" / other.name).read_text()
        if this is directory and address:
            host = f"Address = {address}\n{host}"
        (this / "hosts" / other.name).write_text(host)
    with (directory / "tinc.conf").open("a") as conf:
        conf.write(f"ConnectTo = {peer.name}\n")


def argv(directory: Path) -> list[str]:
    """tincd in the foreground, logging to its output (-d1 names the connection's steps)."""
    return ["tincd", "-c", str(directory), "-D", "-d1", f"--pidfile={directory / 'pid'}"]


def wait_ready(daemon: Daemon, timeout: float = 20.0) -> None:
    wait_for(daemon, lambda: READY in daemon.output(), "its device", timeout)


@contextlib.contextmanager
def daemons(peers: Sequence[tuple[Namespace, Path]]) -> Iterator[list[Daemon]]:
    """tincd for each (namespace, config directory), in this order, each ready
    before the next starts: list the ones connected to first, since a refused
    ConnectTo backs off for seconds before it tries again."""
    with contextlib.ExitStack() as stack:
        started = []
        for ns, peer in peers:
            daemon = start_daemon(ns, argv(peer), peer.name, label=f"tincd ({peer.name})")
            started.append(stack.enter_context(daemon))
            wait_ready(started[-1])
        yield started
