import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunnel.control.uapi_socket import socket_path
from tunnel.lab.testbed import Testbed, cleanup_stale

ROOT = Path(__file__).resolve().parent.parent


def pyvpn(
    *args: str,
    input: str | None = None,
    netns: str | None = None,
    timeout: float = 30,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the pyvpn command line as a user would (in a namespace, in cwd, if given)."""
    argv = [sys.executable, "-m", "tunnel", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        argv, input=input, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


@contextlib.contextmanager
def uapi_listener(prefix: str) -> Iterator[tuple[str, socket.socket]]:
    """A tunnel's UAPI socket, as a daemon makes it (mode 0700, root's), listening
    under a name no one else uses; gone afterwards. Yields the name and the socket."""
    name = f"{prefix}{os.getpid()}"[:15]
    path = socket_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(path))
        path.chmod(0o700)
        listener.listen()
        yield name, listener
    finally:
        listener.close()
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def _stale_namespaces():
    # Leftovers of a crashed earlier run must not break this one.
    cleanup_stale()


@pytest.fixture
def bed(request):
    tag = "".join(c for c in request.node.name if c.isalnum())[-6:]
    with Testbed(tag=tag) as testbed:
        yield testbed


@pytest.fixture(params=["python", "native"])
def datapath(request):
    """Every namespace test runs on both data planes; native must be built (setup does)."""
    return request.param
