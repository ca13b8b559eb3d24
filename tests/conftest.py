import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tunnel.control.uapi_socket import socket_path
from tunnel.lab.testbed import Daemon, Namespace
from tunnel.planes import dp

from .bed import Testbed, cleanup_stale

ROOT = Path(__file__).resolve().parent.parent

# What the native tests need, or None: scripts/setup builds it.
NATIVE_MISSING = None if dp.available() else "the native plane (tunnel.planes._native) is not built"


def under_ci() -> bool:
    """CI=true (or any value but false/0/no), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(problem: str) -> NoReturn:
    """A test cannot run for want of a build, a tool or root: locally it is
    skipped, but under CI it fails, since there a skip would hide that the
    machine lacks what the suite is meant to prove."""
    if under_ci():
        pytest.fail(f"CI: {problem}", pytrace=False)
    pytest.skip(problem)


def needs(problem: str | None) -> pytest.MarkDecorator:
    """Mark tests (or a module, as pytestmark) that cannot run while `problem`
    (what host_problem, missing_tools or NATIVE_MISSING say) is not None."""
    return pytest.mark.needs(problem)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(problem): skip for it locally, fail under CI")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that takes the test bed, itself or through a fixture, builds
    # namespaces: `-m "not netns"` leaves it out, and the unit tests run alone.
    for item in items:
        if "bed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.netns)
    # The groups first (the builds and the lab's runs are long): xdist hands out
    # work in this order, so they start at once and end with the rest, not after it.
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


@pytest.fixture(autouse=True)
def _namespaces_only_where_marked(request, monkeypatch):
    """A test that makes a namespace must say so (the netns mark), or
    `-m "not netns"` would not be the unit tests alone."""
    if request.node.get_closest_marker("netns") is None:

        def refuse(self):
            pytest.fail(f"{request.node.nodeid} makes a namespace but is not marked netns")

        monkeypatch.setattr(Namespace, "create", refuse)


@pytest.fixture(autouse=True)
def _daemons_of_the_test(request, monkeypatch):
    """Every daemon (tunnel, server) the test starts, for its report."""
    started: list[Daemon] = []
    request.node.daemons = started
    original = Daemon.__init__

    def recorded(self, *args, **kwargs):
        original(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(Daemon, "__init__", recorded)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test shows what its tunnels and servers printed: often the reason,
    and otherwise lost with them."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for daemon in getattr(item, "daemons", []):
            report.sections.append((f"output of {daemon.label} ({report.when})", daemon.output()))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        if mark.args[0] is not None:
            unavailable(mark.args[0])


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
