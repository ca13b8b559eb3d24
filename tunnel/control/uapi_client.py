"""The client side of the UAPI (control/uapi.py has the protocol): finding the
running tunnels, sending them operations, and the set request that brings one to
what a config says. Used by `pyvpn show`, `pyvpn reload`, `pyvpn down` and `pyvpn metrics`."""

import errno
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

from tunnel.protocol.address import format_address

from .config import Config
from .uapi_socket import SOCKET_DIR, socket_path


def sync_request(config: Config, running: list[bytes]) -> str:
    """The set=1 operation that brings a running tunnel to what `config` says. Peers
    that stay are updated, not replaced, so their sessions live on (as `wg syncconf`
    does it, not `wg setconf`). Keys the config leaves out are left as they are."""
    c = config.interface
    lines = ["set=1"]
    if any(c.private_key):  # none in the file: the one `wg set` gave stays
        lines.append(f"private_key={c.private_key.hex()}")
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
        if c.l2:
            lines.append(f"pyvpn_allowed_macs={','.join(m.hex(':') for m in p.allowed_macs)}")
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={n}" for n in p.allowed_ips]
    return "\n".join(lines)


class NotRunning(Exception):
    pass


class NotPyvpn(Exception):
    """The socket is another UAPI server's, such as wireguard-go's."""


class NotAnswering(OSError):
    """A tunnel holds the socket but does not answer: it is hung, or far behind."""


class NotPermitted(OSError):
    """The socket is there but not ours to use: it is root's (mode 0700), as
    wireguard-go's is, and wg says "Permission denied" to anyone else."""


def socket_names() -> list[str]:
    """The names of every tunnel socket, live or a crash's leftover."""
    if not SOCKET_DIR.is_dir():
        return []
    return sorted(p.stem for p in SOCKET_DIR.glob("*.sock"))


def running_names() -> list[str]:
    return [n for n in socket_names() if _alive(socket_path(n))]


def _alive(path: Path) -> bool:
    try:
        with _connect(path):
            return True
    except NotRunning:
        return False
    except (NotAnswering, NotPermitted):
        return True


# How long a tunnel may take to answer before it counts as hung.
TIMEOUT = 5.0


def _connect(path: Path, timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (BlockingIOError, TimeoutError):
        # The listener's backlog is full: connections wait there for a tunnel that
        # does not accept them (a leftover socket refuses instead).
        sock.close()
        raise NotAnswering(errno.EAGAIN, f"the tunnel at {path} does not answer") from None
    except PermissionError as e:
        sock.close()
        raise NotPermitted(e.errno, f"{path.stem}: {e.strerror}") from None
    except OSError:
        sock.close()
        raise NotRunning(f"no tunnel is running at {path}") from None
    return sock


def exchange(name: str, text: str, timeout: float = TIMEOUT) -> str:
    """Send raw protocol text (operations ending in a blank line); return the reply."""
    with _connect(socket_path(name), timeout) as sock:
        data = bytearray()  # a hub's reply runs to megabytes: appended, not copied anew
        try:
            sock.sendall(text.encode())
            while not data.endswith(b"\n\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            message = f"{name} does not answer within {timeout:g} s"
            raise NotAnswering(errno.ETIMEDOUT, message) from None
    return data.decode()


def request(name: str, operation: str, timeout: float = TIMEOUT) -> dict[str, str]:
    """Send one operation and return the reply's keys (the last value of each)."""
    text = exchange(name, f"{operation}\n\n", timeout)
    reply = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if reply.get("errno", "0") != "0":
        code = abs(int(reply["errno"]))  # set replies carry it negative
        verb = operation.partition("\n")[0]  # a set's lines hold keys: never echoed
        raise OSError(code, f"{name}: {verb} failed: {os.strerror(code)}")
    return reply


def status(name: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    reply = request(name, "get=pyvpn", timeout)
    if "json" not in reply:  # wireguard-go hangs up on an operation it does not know
        raise NotPyvpn(f"{name} is not a pyvpn tunnel")
    return json.loads(reply["json"])


def shown(name: str, timeout: float = TIMEOUT) -> str:
    """What `pyvpn show` prints of the tunnel, rendered by its daemon."""
    try:
        reply = request(name, "get=pyvpn_text", timeout)
    except OSError as e:
        if e.errno != errno.EPROTO:
            raise
        # A daemon from before get=pyvpn_text, still running after an upgrade.
        from .show import render

        return render(status(name, timeout))
    if "text" not in reply:
        raise NotPyvpn(f"{name} is not a pyvpn tunnel")
    return json.loads(reply["text"])


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
