"""WireGuard's cross-platform userspace API (wireguard.com/xplatform): the
key=value text protocol `wg` speaks over /var/run/wireguard/NAME.sock.
pyvpn answers `get=1` exactly as wireguard-go does, takes `set=1` (so `wg set`,
`wg setconf` and `wg syncconf` work), and adds `get=pyvpn`, which returns the
JSON status snapshot that `pyvpn show` prints."""

import errno
import ipaddress
import json
import os
import re
import socket
import struct
from pathlib import Path
from typing import Any

from .allowed_ips import Network
from .config import Config
from .interface import Interface
from .reconfig import Change, IPEdit, PeerChange, Refused
from .udp import format_address, is_name, split_address

SOCKET_DIR = Path("/var/run/wireguard")
EPROTO = errno.EPROTO
KEY_HEX = re.compile(r"[0-9a-fA-F]{64}")
DECIMAL = re.compile(r"[0-9]{1,10}")


def socket_path(name: str) -> Path:
    return SOCKET_DIR / f"{name}.sock"


def get_response(iface: Interface, listen_port: int, fwmark: int = 0) -> str:
    """The reply to `get=1`, in wireguard-go's order (device/uapi.go)."""
    lines = [f"private_key={iface.identity.private_key.hex()}", f"listen_port={listen_port}"]
    if fwmark:
        lines.append(f"fwmark={fwmark}")
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


def error_response(code: int) -> str:
    return f"errno={code}\n\n"


def set_error_response(code: int) -> str:
    """wg reads a set's errno as negative (ipc-uapi.h), as wireguard-go sends it."""
    return error_response(-code)


def parse_set(lines: list[str]) -> Change:
    """The lines after `set=1`, up to the blank line, as one Change; Refused
    for the first line that is not valid (device/uapi.go IpcSetOperation)."""
    change = Change()
    peer: PeerChange | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise Refused(errno.EPROTO, "a line is not key=value")
        if key == "public_key":
            peer = PeerChange(_key(key, value))
            change.peers.append(peer)
        elif peer is None:
            _device_line(change, key, value)
        else:
            _peer_line(peer, key, value)
    return change


def _device_line(change: Change, key: str, value: str) -> None:
    if key == "private_key":
        private = _key(key, value) if value else bytes(32)
        if not any(private):
            raise Refused(errno.EINVAL, "private_key: pyvpn cannot run without one")
        change.private_key = private
    elif key == "listen_port":
        change.listen_port = _number(key, value, 0xFFFF)
    elif key == "fwmark":
        change.fwmark = _number(key, value, 0xFFFFFFFF) if value else 0  # empty: remove
    elif key == "replace_peers":
        change.replace_peers = _true(key, value)
    else:
        raise Refused(errno.EINVAL, f"unknown interface key {key[:40]!r}")


def _peer_line(peer: PeerChange, key: str, value: str) -> None:
    if key == "remove":
        peer.remove = _true(key, value)
    elif key == "update_only":
        peer.update_only = _true(key, value)
    elif key == "preshared_key":
        peer.preshared_key = _key(key, value)
    elif key == "endpoint":
        peer.endpoint = _endpoint(value)
    elif key == "pyvpn_endpoint_name":  # pyvpn's own key, sent by `pyvpn reload`
        peer.endpoint_name = _endpoint_name(value)
    elif key == "persistent_keepalive_interval":
        peer.persistent_keepalive = _number(key, value, 0xFFFF)
    elif key == "replace_allowed_ips":
        peer.replace_allowed_ips = _true(key, value)
    elif key == "allowed_ip":
        # wg-tools from 2025 on (incremental allowed-ips) removes one with a leading '-'.
        removing = value.startswith("-")
        peer.allowed_ips.append(IPEdit(_network(value[1:] if removing else value), removing))
    elif key == "protocol_version":
        if value != "1":
            raise Refused(errno.EINVAL, f"protocol_version {value[:20]!r}: only 1 exists")
    else:
        raise Refused(errno.EINVAL, f"unknown peer key {key[:40]!r}")


def _key(key: str, value: str) -> bytes:
    if not KEY_HEX.fullmatch(value):
        raise Refused(errno.EINVAL, f"{key}: not 64 hex digits")
    return bytes.fromhex(value)


def _number(key: str, value: str, high: int) -> int:
    if not DECIMAL.fullmatch(value) or int(value) > high:
        raise Refused(errno.EINVAL, f"{key}: {value[:20]!r} is not a number from 0 to {high}")
    return int(value)


def _true(key: str, value: str) -> bool:
    if value != "true":
        raise Refused(errno.EINVAL, f"{key}: only true is valid, got {value[:20]!r}")
    return True


def _endpoint(value: str) -> tuple[str, int]:
    # wg resolves names itself and sends numeric addresses: no DNS here.
    try:
        host, port = split_address(value)
        return str(ipaddress.ip_address(host)), port
    except ValueError as e:
        raise Refused(errno.EINVAL, f"endpoint: {e}") from None


def _endpoint_name(value: str) -> tuple[str, int]:
    try:
        host, port = split_address(value)
    except ValueError as e:
        raise Refused(errno.EINVAL, f"pyvpn_endpoint_name: {e}") from None
    if not is_name(host) or len(host) > 253 or not host.isprintable() or " " in host:
        raise Refused(errno.EINVAL, f"pyvpn_endpoint_name: {host[:40]!r} is not a host name")
    return host, port


def _network(value: str) -> Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Refused(errno.EINVAL, f"allowed_ip: {value[:50]!r} is not a network") from None


# Client side, used by `pyvpn show`, `pyvpn reload` and `pyvpn down`.


def sync_request(config: Config, running: list[bytes]) -> str:
    """The set=1 operation that brings a running tunnel to what `config` says. Peers
    that stay are updated, not replaced, so their sessions live on (as `wg syncconf`
    does it, not `wg setconf`). Keys the config leaves out are left as they are."""
    c = config.interface
    lines = ["set=1", f"private_key={c.private_key.hex()}"]
    if c.listen_port:
        lines.append(f"listen_port={c.listen_port}")
    if c.fwmark:
        lines.append(f"fwmark={c.fwmark}")
    wanted = {p.public_key for p in config.peers}
    lines += [f"public_key={k.hex()}\nremove=true" for k in running if k not in wanted]
    for p in config.peers:
        lines.append(f"public_key={p.public_key.hex()}")
        lines.append(f"preshared_key={(p.preshared_key or bytes(32)).hex()}")
        if p.endpoint:
            lines.append(f"endpoint={format_address(p.endpoint)}")
        if p.endpoint_name:
            lines.append(f"pyvpn_endpoint_name={format_address(p.endpoint_name)}")
        lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={n}" for n in p.allowed_ips]
    return "\n".join(lines)


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


def exchange(name: str, text: str) -> str:
    """Send raw protocol text (operations ending in a blank line); return the reply."""
    with _connect(socket_path(name)) as sock:
        sock.sendall(text.encode())
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode()


def request(name: str, operation: str) -> dict[str, str]:
    """Send one operation and return the reply's keys (the last value of each)."""
    text = exchange(name, f"{operation}\n\n")
    reply = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if reply.get("errno", "0") != "0":
        code = abs(int(reply["errno"]))  # set replies carry it negative
        verb = operation.partition("\n")[0]  # a set's lines hold keys: never echoed
        raise OSError(code, f"{name}: {verb} failed: {os.strerror(code)}")
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
