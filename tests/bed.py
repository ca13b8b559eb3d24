"""The test bed as tests take it: the lab's Testbed (tunnel/lab/testbed.py, which
`pyvpn demo` and `pyvpn bench` share) with the suite's own checks, that nothing
outlives a test, and its sweep of what crashed runs left behind."""

from __future__ import annotations

import os
import re
from types import TracebackType

from tunnel.lab import testbed
from tunnel.lab.testbed import DEFAULT_PREFIX, NETNS_DIR, WG_RUN_DIR, Namespace, children


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces named PREFIX-PID-... whose PID is dead: leftovers of crashed runs."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-")
    removed = []
    listing = NETNS_DIR.iterdir() if NETNS_DIR.is_dir() else iter(())
    for entry in sorted(listing):
        match = pattern.match(entry.name)
        if match and not pid_alive(int(match.group(1))):
            Namespace(entry.name).delete()
            removed.append(entry.name)
    return removed


def leftovers(pid: int | None = None, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """What a run by `pid` (default: us) left behind: namespaces, UAPI sockets, child processes."""
    pid = pid if pid is not None else os.getpid()
    found = []
    if NETNS_DIR.is_dir():
        found += [
            f"netns {e.name}" for e in NETNS_DIR.iterdir() if e.name.startswith(f"{prefix}-{pid}-")
        ]
    if WG_RUN_DIR.is_dir():
        found += [
            f"socket {e}"
            for e in WG_RUN_DIR.iterdir()
            if re.search(rf"\D{pid}[a-z]\.sock$", e.name)
        ]
    found += [f"child process {child}" for child in children(pid)]
    return found


class Testbed(testbed.Testbed):
    """A Testbed that, left without an error, asserts that whatever was made while it
    stood (namespaces, UAPI sockets, child processes of ours) is gone with it."""

    __test__ = False  # not a pytest test class, despite the name

    def __enter__(self) -> Testbed:
        # What was there before (an enclosing bed's, a module fixture's) is not ours.
        self._before = set(leftovers())
        super().__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        super().__exit__(kind, exc, traceback)
        if kind is None:  # a failing test's own error says more than what it left
            left = sorted(set(leftovers()) - self._before)
            assert left == [], f"left over by the test bed's test: {left}"
