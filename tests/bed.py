"""The test bed as tests take it: the lab's Testbed (tunnel/lab/testbed.py, which
`pyvpn demo` and `pyvpn bench` share) with the suite's own checks, that nothing
outlives a test, and its sweep of what crashed runs left behind."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tunnel.lab import testbed
from tunnel.lab.testbed import (
    DEFAULT_PORT,
    DEFAULT_PREFIX,
    NETNS_DIR,
    WG_RUN_DIR,
    Namespace,
    children,
    render_config,
)
from tunnel.protocol import keys


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


# How long a test pings to show that an address is NOT reachable: no waiting for
# an event can prove a negative, so this is the shortest bound the protocol
# allows. On a veth a handshake is one round trip and a ping another, each about a
# millisecond, and ping probes every 0.2 s: within 1 s an answer would have come
# several times over (and ping's deadline counts whole seconds).
UNREACHABLE_WITHIN = 1.0


# A star: a hub (namespace 0) with three spokes, each over a link of its own.
# (the hub's end, the spoke's end) for each spoke; the first is the bed's a-b veth.
STAR_UNDERLAY = [(f"198.18.{i}.1", f"198.18.{i}.2") for i in (0, 2, 3)]


@contextlib.contextmanager
def star_bed(tag: str) -> Iterator[Testbed]:
    """Four namespaces, the first (the hub) linked to each other one over STAR_UNDERLAY."""
    with Testbed(n=4, tag=tag) as bed:
        hub = bed.namespaces[0]
        for i, spoke in enumerate(bed.namespaces[2:], start=2):
            bed.link(hub, spoke, [f"198.18.{i}.1/24"], [f"198.18.{i}.2/24"])
        yield bed


def write_star_configs(
    directory: Path,
    names: Sequence[str],
    datapath: str,
    mode: str = "tun",
    *,
    hub: dict[str, Any] | None = None,
    hub_peer: Callable[[int], dict[str, Any]] = lambda i: {},
    spoke: Callable[[int], dict[str, Any]] = lambda i: {},
    spoke_peer: Callable[[int], dict[str, Any]] = lambda i: {},
) -> list[Path]:
    """pyvpn configs for a star_bed, with fresh keys: the hub (names[0]) has a
    [[peer]] for each spoke, each spoke the hub as its one peer. `hub` adds keys to
    the hub's [interface], `hub_peer(i)` to its peer for spoke i, `spoke(i)` and
    `spoke_peer(i)` to spoke i's [interface] and [[peer]]."""
    private = [keys.generate_private_key() for _ in names]
    public = [keys.encode(keys.public_key(k)) for k in private]

    def interface(i: int) -> dict[str, Any]:
        return {"name": names[i], "mode": mode, "private_key": keys.encode(private[i]),
                "listen_port": DEFAULT_PORT, "datapath": datapath}  # fmt: skip

    tables = [
        (
            {**interface(0), **(hub or {})},
            [{"public_key": public[i + 1], "endpoint": f"{spoke_end}:{DEFAULT_PORT}",
              **hub_peer(i)} for i, (_, spoke_end) in enumerate(STAR_UNDERLAY)],
        )
    ]  # fmt: skip
    for i, (hub_end, _) in enumerate(STAR_UNDERLAY):
        peer = {"public_key": public[0], "endpoint": f"{hub_end}:{DEFAULT_PORT}", **spoke_peer(i)}
        tables.append(({**interface(i + 1), **spoke(i)}, [peer]))
    paths = []
    for (settings, peers), name in zip(tables, names, strict=True):
        path = directory / f"{name}.toml"
        path.write_text(render_config(settings, peers))
        paths.append(path)
    return paths
