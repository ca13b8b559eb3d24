"""coturn's turnserver in a namespace: the STUN and TURN server of a fleet's
tests and of `pyvpn bench --fleet`.

A throwaway server: UDP only (no TLS, no DTLS), one static user under the
long-term credential mechanism (RFC 5389 section 10.2, what TURN clients
speak), no telnet CLI, its configuration, user database, pid and log in a
temporary directory removed when it stops."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tunnel.protocol.address import Address

from .testbed import Daemon, Namespace, start_daemon, wait_for

STUN_PORT = 3478  # RFC 5389's default for STUN and TURN over UDP
REALM = "pyvpn"
# Where coturn takes relayed transport addresses from: the IANA dynamic range.
RELAY_PORTS = (49152, 65535)


class Coturn:
    """turnserver on `address` (one of the namespace's) with user `username`.
    A context manager: started on entry, stopped and its files removed on exit."""

    def __init__(
        self,
        ns: Namespace,
        address: str,
        username: str = "pyvpn",
        password: str = "pyvpn-test",
        port: int = STUN_PORT,
    ) -> None:
        self.ns = ns
        self.server: Address = (address, port)
        self.username = username
        self.password = password
        self._dir: Path | None = None
        self._daemon: Daemon | None = None

    def config(self, directory: Path) -> str:
        host, port = self.server
        lines = [
            f"listening-ip={host}",
            f"relay-ip={host}",
            f"listening-port={port}",
            f"min-port={RELAY_PORTS[0]}",
            f"max-port={RELAY_PORTS[1]}",
            "lt-cred-mech",
            f"user={self.username}:{self.password}",
            f"realm={REALM}",
            "no-tls",
            "no-dtls",
            "no-tcp-relay",
            f"userdb={directory / 'turndb'}",
            f"pidfile={directory / 'turnserver.pid'}",
            f"log-file={self.log_path(directory)}",
            "simple-log",
        ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def log_path(directory: Path) -> Path:
        return directory / "turnserver.log"

    def start(self, timeout: float = 10.0) -> Coturn:
        self._dir = Path(tempfile.mkdtemp(prefix="pyvpn-coturn-"))
        conf = self._dir / "turnserver.conf"
        conf.write_text(self.config(self._dir))
        self._daemon = start_daemon(
            self.ns, ["turnserver", "-c", str(conf), "--no-cli"], "turnserver", label="coturn"
        )
        wait_for(self._daemon, self.listening, f"UDP port {self.server[1]} open", timeout)
        return self

    def listening(self) -> bool:
        done = self.ns.run("ss", "-Hlun", f"sport = :{self.server[1]}", check=False)
        return self.server[0] in done.stdout

    def log(self) -> str:
        """What turnserver logged so far (for a failing test's message)."""
        if self._dir is None or not self.log_path(self._dir).exists():
            return ""
        return self.log_path(self._dir).read_text(errors="replace")

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Coturn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
