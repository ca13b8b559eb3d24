"""An etcd for a fleet's tests and bench: Debian's etcd-server binary, one
member, its data in a directory of its own, on loopback or in a namespace.
Stopped and started again on the same data, it is the same registry after an
outage."""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from .testbed import Daemon, Namespace, poll_until, start_daemon

ETCD = "etcd"
CLIENT_PORT = 2379


def etcd_problem() -> str | None:
    """Why no etcd can be started here, or None."""
    return None if shutil.which(ETCD) else "etcd is not installed (scripts/setup: etcd-server)"


def free_port() -> int:
    """A TCP port free on loopback now (the root namespace's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Asked from inside the namespace etcd serves in (no curl needed).
HEALTH = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=1) as answer:
    sys.exit(json.load(answer).get("health") != "true")
"""


class _Here(Namespace):
    """The root namespace, for an etcd on its loopback."""

    def argv(self, *argv: str) -> list[str]:
        return list(argv)


class Etcd:
    """One etcd member listening for clients on http://HOST:PORT. In a namespace
    any port is free; on the root namespace's loopback, ports are picked free."""

    def __init__(self, ns: Namespace | None = None, host: str = "127.0.0.1") -> None:
        self.ns = ns
        self.host = host
        self.client_port = CLIENT_PORT if ns else free_port()
        self.peer_port = CLIENT_PORT + 1 if ns else free_port()
        self._data = tempfile.TemporaryDirectory(prefix="pyvpn-etcd-")
        self.daemon: Daemon | None = None
        self.listening_on = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def start(self, listen: str | None = None, timeout: float = 20.0) -> None:
        """Serve the data; `listen` (default: host) is the address clients reach
        it at, so an etcd on loopback alone is out of its hosts' reach."""
        self.listening_on = listen or self.host
        name = "pyvpn"
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://{self.listening_on}:{self.client_port}"
        argv = [
            ETCD, "--name", name, "--data-dir", str(Path(self._data.name) / "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}", "--log-level", "warn",
        ]  # fmt: skip
        self.daemon = start_daemon(self.ns or _Here("root"), argv, "etcd", label="etcd")
        if not poll_until(self.healthy, timeout, 0.2):
            output = self.daemon.output()
            self.stop()
            raise RuntimeError(f"etcd did not answer at {client} within {timeout:g} s: {output}")

    def healthy(self) -> bool:
        url = f"http://{self.listening_on}:{self.client_port}/health"
        ns = self.ns or _Here("root")
        return ns.run(sys.executable, "-c", HEALTH, url, check=False).returncode == 0

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def __enter__(self) -> Etcd:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        self._data.cleanup()
