"""WireGuard's cross-platform userspace API (wireguard.com/xplatform): the
key=value text protocol `wg` speaks over /var/run/wireguard/NAME.sock.
pyvpn answers `get=1` exactly as wireguard-go does, and adds `get=pyvpn`,
which returns the JSON status snapshot that `pyvpn show` prints."""

import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

from .interface import Interface

SOCKET_DIR = Path("/var/run/wireguard")
EPROTO = 71


def socket_path(name: str) -> Path:
    return SOCKET_DIR / f"{name}.sock"


def get_response(iface: Interface, listen_port: int) -> str:
    """The reply to `get=1`, in wireguard-go's order (device/uapi.go)."""
    lines = [f"private_key={iface.identity.private_key.hex()}", f"listen_port={listen_port}"]
    for peer in iface.peers.values():
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={(peer.preshared_key or bytes(32)).hex()}")
        lines.append("protocol_version=1")
        if peer.endpoint:
            host, port = peer.endpoint
            lines.append(f"endpoint={f'[{host}]' if ':' in host else host}:{port}")
        wall = peer.last_handshake_wall or 0.0
        lines.append(f"last_handshake_time_sec={int(wall)}")
        lines.append(f"last_handshake_time_nsec={int((wall - int(wall)) * 1e9)}")
        lines.append(f"tx_bytes={peer.tx_bytes}")
        lines.append(f"rx_bytes={peer.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        lines += [f"allowed_ip={n}" for n in iface.routes.networks_of(peer)]
    return "\n".join(lines) + "\nerrno=0\n\n"


def status_response(status: dict[str, Any]) -> str:
    return f"json={json.dumps(status)}\nerrno=0\n\n"


def error_response(errno: int) -> str:
    return f"errno={errno}\n\n"


# Client side, used by `pyvpn show` and `pyvpn down`.


class NotRunning(Exception):
    pass


def running_names() -> list[str]:
    if not SOCKET_DIR.is_dir():
        return []
    return sorted(p.stem for p in SOCKET_DIR.glob("*.sock") if _alive(p))


def _alive(path: Path) -> bool:
    try:
        with _connect(path):
            return True
    except NotRunning:
        return False


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise NotRunning(f"no tunnel is running at {path}") from None
    return sock


def request(name: str, operation: str) -> dict[str, str]:
    """Send one operation and return the reply's keys (the last value of each)."""
    with _connect(socket_path(name)) as sock:
        sock.sendall(f"{operation}\n\n".encode())
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
    if reply.get("errno", "0") != "0":
        raise OSError(int(reply["errno"]), f"{name}: {operation} failed")
    return reply


def status(name: str) -> dict[str, Any]:
    return json.loads(request(name, "get=pyvpn")["json"])


def server_pid(name: str) -> int:
    """The pid of the process serving NAME's socket, from the kernel (SO_PEERCRED)."""
    with _connect(socket_path(name)) as sock:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def remove_stale(name: str) -> None:
    """Raise if a live tunnel holds the socket; remove it if it is a crash's leftover."""
    path = socket_path(name)
    if not path.exists():
        return
    if _alive(path):
        raise FileExistsError(f"a tunnel named {name} is already running (pid {server_pid(name)})")
    os.unlink(path)
