"""Test networks: namespaces, veth links, bridges and the tunnel processes inside them.

The one place that builds networks, for `pyvpn demo`, `pyvpn bench` and the test suite.

Plumbing uses the `ip` command, not pyroute2 (which the product uses): one
`ip -n X link add ... peer ... netns Y` creates a veth pair straight across two
namespaces, so no device ever appears in the root namespace where parallel runs
could collide; failures come back as readable text; and no netlink socket or
namespace handle outlives a call, which keeps teardown after a crash trivial.

Every name carries the owner's pid (namespaces "pvtb-PID-SEQx", tunnel devices
"pvtunPIDa"), so parallel runs never collide and the test suite's sweep
(tests/bed.py) can tell leftovers of a dead run from a live one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tunnel.control.config import read as read_config
from tunnel.control.convert import to_toml
from tunnel.protocol import keys

NETNS_DIR = Path("/var/run/netns")
WG_RUN_DIR = Path("/var/run/wireguard")
DEFAULT_PREFIX = "pvtb"
IFNAMSIZ = 15  # longest Linux interface name
# The first veth of a test bed gets this ifindex on its first end (Testbed.link).
VETH_INDEX = 1000

UNDERLAY_A = "198.18.0.1"  # RFC 2544 benchmarking range: never routed anywhere
UNDERLAY_B = "198.18.0.2"
UNDERLAY_A6 = "fd18::1"
UNDERLAY_B6 = "fd18::2"
INNER_A = "10.10.0.1"
INNER_B = "10.10.0.2"
INNER_A6 = "fd10::1"
INNER_B6 = "fd10::2"
DEFAULT_PORT = 51820

# pyvpn's "native plane not built" refusal: status 2 from `pyvpn up`.
EXIT_CONFIG = 2

# Where this `tunnel` package was imported from: a checkout or site-packages.
_IMPORT_ROOT = Path(__file__).resolve().parents[2]
_testbed_seq = itertools.count()
T = TypeVar("T")


class CommandError(RuntimeError):
    """A command that failed; the message carries the command line and its stderr."""

    def __init__(self, argv: Sequence[str], why: str, stdout: str = "", stderr: str = "") -> None:
        self.argv = list(argv)
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr or stdout).strip()
        super().__init__(f"{shlex.join(self.argv)}: {why}" + (f": {detail}" if detail else ""))


class TunnelStartError(RuntimeError):
    """A tunnel process that died or never opened its UAPI socket."""

    def __init__(self, message: str, returncode: int | None, output: str) -> None:
        self.returncode = returncode
        self.output = output
        lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
        # The first line says it all (the last thing the process said is usually
        # its error); the rest of the output follows for whoever needs more.
        first = message + (f": {lines[-1]}" if lines else "")
        rest = "\n".join(lines[-40:])
        super().__init__(first + (f"\n--- its output ---\n{rest}" if rest else ""))


def run_command(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, f"timed out after {timeout:g} s", _text(exc.stdout)) from None
    except FileNotFoundError:
        raise CommandError(argv, "command not found") from None
    if check and done.returncode != 0:
        raise CommandError(argv, f"exit status {done.returncode}", done.stdout, done.stderr)
    return done


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> int:
    """SIGTERM, give it `grace` seconds to tear down, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return proc.returncode


def host_problem(tools: Sequence[str] = ("ip", "ping", "iperf3", "ss")) -> str | None:
    """Why this machine cannot build testbeds and measure through them, or None."""
    if os.geteuid() != 0:
        return "must run as root (it creates network namespaces)"
    return missing_tools(tools)


def missing_tools(tools: Sequence[str]) -> str | None:
    """Which of these commands are not on the PATH, or None."""
    missing = [t for t in tools if shutil.which(t) is None]
    return f"missing required tools: {', '.join(missing)}" if missing else None


def first_line(exc: BaseException) -> str:
    """An error as one line for a command's stderr; the details stay in the exception."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Namespace:
    """A network namespace by name; processes started in it are stopped when it is deleted."""

    def __init__(self, name: str, label: str = "") -> None:
        self.name = name
        self.label = label or name
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def exists(self) -> bool:
        return (NETNS_DIR / self.name).exists()

    def create(self) -> Namespace:
        run_command(["ip", "netns", "add", self.name])
        # No duplicate address detection: IPv6 (also the link-local addresses that
        # neighbour discovery needs) works the moment a link is up, not ~2 s later.
        for scope in ("all", "default"):
            self.sysctl(f"net.ipv6.conf.{scope}.accept_dad", 0)
        self.run("ip", "link", "set", "lo", "up")
        return self

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_command(self.argv(*argv), check=check, timeout=timeout, input=input)

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
        # A session of its own: Ctrl-C reaches only us, and we stop children in
        # order (tunnels get SIGTERM and tear down) instead of all dying at once.
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.argv(*argv), **kw)
        self._procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        done = run_command(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in done.stdout.split()]

    def stop_processes(self, grace: float = 5.0) -> None:
        """Stop what we started (newest first), then anything else still inside."""
        while self._procs:
            stop_process(self._procs.pop(), grace)
        if self.exists():
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def delete(self) -> None:
        # A namespace with live processes outlives `ip netns del`, so stop them first.
        self.stop_processes()
        if self.exists():
            try:
                run_command(["ip", "netns", "del", self.name])
            except CommandError:
                # Another run's sweep may have taken it in between: gone is what we want.
                if self.exists():
                    raise

    # Small plumbing helpers, so callers never spell `ip` themselves.
    def add_address(self, dev: str, cidr: str) -> None:
        # nodad: an IPv6 address is usable at once instead of after ~1 s of DAD.
        extra = ["nodad"] if ":" in cidr else []
        self.run("ip", "addr", "add", cidr, "dev", dev, *extra)

    def link_up(self, dev: str, mtu: int | None = None) -> None:
        if mtu is not None:
            self.run("ip", "link", "set", dev, "mtu", str(mtu))
        self.run("ip", "link", "set", dev, "up")

    def route_replace(self, cidr: str, dev: str) -> None:
        family = "-6" if ":" in cidr else "-4"
        self.run("ip", family, "route", "replace", cidr, "dev", dev)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def has_link(self, dev: str) -> bool:
        return self.run("ip", "link", "show", dev, check=False).returncode == 0


@dataclass(frozen=True)
class Link:
    """A veth pair: `dev1` lives in `ns1`, `dev2` in `ns2`."""

    ns1: Namespace
    dev1: str
    ns2: Namespace
    dev2: str


class Testbed:
    """Namespaces A and B joined by a veth with underlay addresses; more on request.

    A context manager: leaving it stops every process started in its namespaces
    and deletes them (which removes their devices), also on errors and Ctrl-C.
    """

    def __init__(self, n: int = 2, tag: str | None = None, prefix: str = DEFAULT_PREFIX) -> None:
        if n < 2:
            raise ValueError("a testbed has at least two namespaces")
        self.n = n
        self.prefix = prefix
        self.tag = tag if tag is not None else str(next(_testbed_seq))
        self.namespaces: list[Namespace] = []
        self.links: list[Link] = []
        self._labels = iter(string.ascii_lowercase)
        self.a_addr, self.b_addr = UNDERLAY_A, UNDERLAY_B
        self.a_addr6, self.b_addr6 = UNDERLAY_A6, UNDERLAY_B6

    @property
    def a(self) -> Namespace:
        return self.namespaces[0]

    @property
    def b(self) -> Namespace:
        return self.namespaces[1]

    @property
    def a_veth(self) -> str:
        return self.links[0].dev1

    @property
    def b_veth(self) -> str:
        return self.links[0].dev2

    def __enter__(self) -> Testbed:
        try:
            for _ in range(self.n):
                self.add_namespace()
            self.link(
                self.a,
                self.b,
                [f"{UNDERLAY_A}/24", f"{UNDERLAY_A6}/64"],
                [f"{UNDERLAY_B}/24", f"{UNDERLAY_B6}/64"],
            )
            for addr in (UNDERLAY_B, UNDERLAY_B6):
                wait_reachable(self.a, addr, timeout=5)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        errors = []
        for ns in reversed(self.namespaces):
            try:
                ns.delete()
            except CommandError as exc:
                errors.append(exc)
        self.namespaces.clear()
        self.links.clear()
        if errors:
            raise errors[0]

    def add_namespace(self, label: str | None = None) -> Namespace:
        label = label or next(self._labels)
        ns = Namespace(f"{self.prefix}-{os.getpid()}-{self.tag}{label}", label)
        # Registered before create() so a half-made namespace is still deleted.
        self.namespaces.append(ns)
        ns.create()
        return ns

    def link(
        self,
        ns1: Namespace,
        ns2: Namespace,
        addrs1: Sequence[str] = (),
        addrs2: Sequence[str] = (),
        *,
        bridge1: str | None = None,
        bridge2: str | None = None,
        mtu: int | None = None,
    ) -> Link:
        """A veth between two namespaces, with addresses and/or plugged into bridges."""
        dev1, dev2 = f"to-{ns2.label}"[:IFNAMSIZ], f"to-{ns1.label}"[:IFNAMSIZ]
        # An ifindex unlike its peer's: two fresh namespaces would give both ends
        # the same, and then the kernel's link watcher takes the carrier change
        # as not urgent and sits on it for up to a second, through which IPv6
        # over the link is not ready (linkwatch_urgent_event, addrconf_link_ready).
        index = VETH_INDEX + len(self.links)
        run_command(
            ["ip", "-n", ns1.name, "link", "add", dev1, "index", str(index), "type", "veth",
             "peer", "name", dev2, "netns", ns2.name]
        )  # fmt: skip
        link = Link(ns1, dev1, ns2, dev2)
        self.links.append(link)
        for ns, dev, addrs, bridge in ((ns1, dev1, addrs1, bridge1), (ns2, dev2, addrs2, bridge2)):
            if bridge is not None:
                ns.run("ip", "link", "set", dev, "master", bridge)
            for cidr in addrs:
                ns.add_address(dev, cidr)
            ns.link_up(dev, mtu)
        return link

    def add_bridge(self, ns: Namespace, name: str = "br0", addrs: Sequence[str] = ()) -> str:
        """A Linux bridge in `ns`; plug veths into it with `link(..., bridge1=name)`."""
        # An address of its own: without one a bridge takes its lowest port's and
        # changes it as ports join, and whoever had its old one in a neighbour
        # table sends to a MAC address nobody answers to.
        mac = bytes([0x02, *os.urandom(5)])  # locally administered, unicast
        ns.run("ip", "link", "add", name, "address", mac.hex(":"), "type", "bridge")
        for cidr in addrs:
            ns.add_address(name, cidr)
        ns.link_up(name)
        return name


def proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on, as proc(5) numbers them."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after it.
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                state, ppid = proc_stat(int(entry.name))[:2]
                if int(ppid) == pid and state != "Z":
                    found.append(int(entry.name))
    return found


# ---------------------------------------------------------------------------
# Long-running processes (tunnels) in a namespace


class Daemon:
    """A long-running process in a namespace; its output goes to a file we can show on failure."""

    def __init__(
        self, ns: Namespace, argv: Sequence[str], name: str, env: dict[str, str], label: str
    ) -> None:
        self.ns = ns
        self.name = name
        self.argv = list(argv)
        self.label = label  # how error messages name it: short, unlike a full argv
        self._log = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 -- closed in stop()
        self._final_output: str | None = None
        self.proc = ns.popen(
            *argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if self._final_output is not None:
            return self._final_output
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, grace: float = 5.0) -> int:
        code = stop_process(self.proc, grace)
        if self._final_output is None:
            self._final_output = self.output()
            self._log.close()
        return code

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_daemon(
    ns: Namespace,
    argv: Sequence[str],
    name: str,
    env: dict[str, str] | None = None,
    label: str | None = None,
) -> Daemon:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return Daemon(ns, argv, name, full_env, label or f"{Path(argv[0]).name} ({name})")


def poll_until(ready: Callable[[], T], timeout: float, poll: float = 0.05) -> T:
    """Call `ready()` every `poll` seconds until it returns something true, and return
    that; at the deadline, return its last (false) answer."""
    deadline = time.monotonic() + timeout
    while not (answer := ready()) and time.monotonic() < deadline:
        time.sleep(poll)
    return answer


def wait_for(
    daemon: Daemon, ready: Callable[[], bool], what: str, timeout: float, poll: float = 0.05
) -> None:
    """Poll `ready()` until true; fail early and clearly if the daemon dies meanwhile."""

    def outcome() -> str:
        return "ready" if ready() else "" if daemon.alive() else "dead"

    found = poll_until(outcome, timeout, poll)
    if found == "ready":
        return
    if found == "dead":
        code = daemon.stop()
        raise TunnelStartError(
            f"{daemon.label} exited with status {code} before {what}", code, daemon.output()
        )
    daemon.stop()
    raise TunnelStartError(f"{daemon.label}: no {what} within {timeout:g} s", None, daemon.output())


def uapi_socket(name: str) -> Path:
    return WG_RUN_DIR / f"{name}.sock"


def uapi_listening(name: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(uapi_socket(name)))
        except OSError:
            return False
    return True


def _remove_dead_socket(name: str) -> None:
    # A SIGKILLed tunnel leaves its socket file behind; it would look "ready".
    path = uapi_socket(name)
    if path.exists() and not uapi_listening(name):
        path.unlink(missing_ok=True)


def pyvpn_env() -> dict[str, str]:
    """The environment in which `python -m tunnel...` runs this same package."""
    # Its import root on PYTHONPATH: `-m tunnel` must find an uninstalled checkout
    # from any cwd too (an installed package is found there anyway).
    path = os.pathsep.join(filter(None, [str(_IMPORT_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def start_pyvpn(
    ns: Namespace,
    config_path: str | os.PathLike[str],
    timeout: float = 20.0,
    args: Sequence[str] = (),
) -> Daemon:
    """`python -m tunnel up [ARGS] CONFIG` in `ns`; returns once its UAPI socket answers."""
    name = read_config(str(config_path)).data.get("interface", {}).get("name", "pyvpn0")
    _remove_dead_socket(name)
    daemon = start_daemon(
        ns,
        [sys.executable, "-m", "tunnel", "up", *args, str(config_path)],
        name,
        {**pyvpn_env(), "PYTHONUNBUFFERED": "1"},
        label=f"pyvpn up {Path(config_path).name}",
    )
    wait_for(daemon, lambda: uapi_listening(name), "its UAPI socket appeared", timeout)
    return daemon


def pyvpn_cli(*argv: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """`python -m tunnel ARGV...` from this checkout, in the root namespace (UAPI is global)."""
    return run_command([sys.executable, "-m", "tunnel", *argv], timeout=timeout, env=pyvpn_env())


def pyvpn_status(name: str) -> dict[str, Any]:
    """`pyvpn show NAME --json`: the documented view of a running tunnel."""
    status: dict[str, Any] = json.loads(pyvpn_cli("show", name, "--json").stdout)
    return status


@dataclass(frozen=True)
class WgPeer:
    """A peer as `wg set` takes it."""

    public_key: bytes
    allowed_ips: Sequence[str]
    endpoint: str | None = None
    persistent_keepalive: int | None = None
    preshared_key: bytes | None = None


def _key_file(directory: str, key: bytes, name: str) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(keys.encode(key) + "\n")
    return path


# The wireguard-go builds pyvpn is tested and measured against. The current one
# (Debian sid's, the newest) is the binary $PYVPN_WIREGUARD_GO names (`pyvpn
# bench --wireguard-go`), else the one scripts/setup unpacks into the venv (the
# repo's .venv/contenders), else wireguard-go on PATH; trixie's (0.0.20231211,
# with the TUN and UDP offloads of 2023) is unpacked beside it, and bookworm's
# (0.0.20220316) is the system's.
WIREGUARD_GO_ENV = "PYVPN_WIREGUARD_GO"
_CONTENDERS = Path(sys.prefix) / "contenders"
_VENV_WIREGUARD_GO = _CONTENDERS / "wireguard-go/usr/bin/wireguard-go"
WIREGUARD_GO_BUILDS = {
    "trixie": _CONTENDERS / "wireguard-go-trixie/usr/bin/wireguard-go",
    "bookworm": Path("/usr/bin/wireguard-go"),
}


def wireguard_go(build: str = "current") -> Path:
    """The binary of a wireguard-go build; FileNotFoundError says how to get it."""
    if build != "current":
        binary = WIREGUARD_GO_BUILDS[build]
    elif os.environ.get(WIREGUARD_GO_ENV):
        binary = Path(os.environ[WIREGUARD_GO_ENV])
    elif os.access(_VENV_WIREGUARD_GO, os.X_OK):
        binary = _VENV_WIREGUARD_GO
    else:
        binary = Path(shutil.which("wireguard-go") or _VENV_WIREGUARD_GO)
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError(
            f"wireguard-go ({build} build) is not at {binary}: run scripts/setup, "
            f"or name one in ${WIREGUARD_GO_ENV}"
        )
    return binary


def wireguard_go_version(build: str = "current") -> str:
    """The Debian package version of a build, "0.0.20231211-1+b9" (the binary's own
    --version of trixie's build says 0.0.20230223, which its source left as it was):
    from the VERSION file scripts/setup writes beside an unpacked one, else dpkg's."""
    stamp = wireguard_go(build).parents[2] / "VERSION"
    if stamp.is_file():
        return stamp.read_text().strip()
    query = ["dpkg-query", "-W", "-f=${Version}", "wireguard-go"]
    return subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()


def start_wireguard_go(
    ns: Namespace,
    name: str,
    private_key: bytes,
    listen_port: int,
    peers: Sequence[WgPeer] = (),
    addresses: Sequence[str] = (),
    mtu: int | None = None,
    timeout: float = 10.0,
    build: str = "current",
) -> Daemon:
    """wireguard-go (the interop partner) in `ns`, configured with `wg set`, up and routed."""
    _remove_dead_socket(name)
    daemon = start_daemon(
        ns,
        [str(wireguard_go(build)), "-f", name],
        name,
        {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"},
    )
    try:
        wait_for(daemon, lambda: uapi_listening(name), "its UAPI socket appeared", timeout)
        with tempfile.TemporaryDirectory() as tmp:
            argv = ["wg", "set", name, "listen-port", str(listen_port),
                    "private-key", _key_file(tmp, private_key, "private")]  # fmt: skip
            for i, peer in enumerate(peers):
                argv += ["peer", keys.encode(peer.public_key)]
                if peer.preshared_key is not None:
                    argv += ["preshared-key", _key_file(tmp, peer.preshared_key, f"psk{i}")]
                if peer.endpoint:
                    argv += ["endpoint", peer.endpoint]
                if peer.persistent_keepalive:
                    argv += ["persistent-keepalive", str(peer.persistent_keepalive)]
                argv += ["allowed-ips", ",".join(peer.allowed_ips)]
            ns.run(*argv)
        for cidr in addresses:
            ns.add_address(name, cidr)
        ns.link_up(name, mtu)
        for peer in peers:
            for cidr in peer.allowed_ips:
                ns.route_replace(cidr, name)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def reachable(ns: Namespace, addr: str, timeout: float = 2.0) -> bool:
    """Whether `addr` answers a ping from `ns` within `timeout` seconds."""
    # -w: keep probing every 0.2 s until the first reply or the deadline.
    argv = ["ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", f"{max(1, round(timeout))}", addr]
    return ns.run(*argv, check=False, timeout=timeout + 5).returncode == 0


def wait_reachable(ns: Namespace, addr: str, timeout: float = 10.0) -> None:
    """Ping until `addr` answers once: a fresh veth drops packets until the kernel's link
    watcher activates it (up to 1 s), and a tunnel's first packets wait for its handshake."""
    if not reachable(ns, addr, timeout):
        raise TimeoutError(f"{addr} not reachable from namespace {ns.name} within {timeout:g} s")


# ---------------------------------------------------------------------------
# pyvpn peer configs


def device_name(kind: str, side: str, pid: int | None = None) -> str:
    """A per-run device name like "pvtun12345a": UAPI socket paths are machine-wide."""
    name = f"{kind}{pid if pid is not None else os.getpid()}{side}"
    if len(name) > IFNAMSIZ:
        raise ValueError(f"device name {name!r} is longer than {IFNAMSIZ} characters")
    return name


def write_pair_configs(
    directory: str | os.PathLike[str],
    mode: str = "tun",
    datapath: str = "auto",
    *,
    names: tuple[str, str] | None = None,
    ports: tuple[int, int] = (DEFAULT_PORT, DEFAULT_PORT),
    endpoints: tuple[str, str] = (UNDERLAY_A, UNDERLAY_B),
    mtu: int | None = None,
    persistent_keepalive: int | None = None,
    interface_a: dict[str, Any] | None = None,
    interface_b: dict[str, Any] | None = None,
    peer_a: dict[str, Any] | None = None,
    peer_b: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """TOML configs for a pyvpn pair A <-> B over the testbed underlay, with fresh keys.

    `interface_x` / `peer_x` update (or, with a None value, remove) keys of peer
    x's own [interface] and of its [[peer]] section, so tests can break one thing.
    """
    if mode not in ("tun", "tap"):
        raise ValueError(f"mode must be 'tun' or 'tap', not {mode!r}")
    names = names or (device_name(f"pv{mode}", "a"), device_name(f"pv{mode}", "b"))
    private = (keys.generate_private_key(), keys.generate_private_key())
    inner = ((INNER_A, INNER_A6), (INNER_B, INNER_B6))
    # tun routes by allowed-IPs, so each side allows exactly the other's address;
    # tap switches frames by MAC address and takes no allowed_ips at all.
    allowed = (
        [[f"{INNER_B}/32", f"{INNER_B6}/128"], [f"{INNER_A}/32", f"{INNER_A6}/128"]]
        if mode == "tun"
        else [None, None]
    )
    paths = []
    for i in range(2):
        other = 1 - i
        interface: dict[str, Any] = {
            "name": names[i],
            "mode": mode,
            "private_key": keys.encode(private[i]),
            "listen_port": ports[i],
            "address": [f"{inner[i][0]}/24", f"{inner[i][1]}/64"],
            "mtu": mtu,
            "datapath": datapath,
        }
        peer: dict[str, Any] = {
            "public_key": keys.encode(keys.public_key(private[other])),
            "endpoint": f"{endpoints[other]}:{ports[other]}",
            "allowed_ips": allowed[i],
            "persistent_keepalive": persistent_keepalive,
        }
        interface.update((interface_a, interface_b)[i] or {})
        peer.update((peer_a, peer_b)[i] or {})
        path = Path(directory) / f"{names[i]}.toml"
        path.write_text(render_config(interface, [peer]))
        path.chmod(0o600)  # it holds a private key
        paths.append(path)
    return paths[0], paths[1]


def render_config(interface: dict[str, Any], peers: Sequence[dict[str, Any]]) -> str:
    """A peer config in pyvpn's TOML; keys whose value is None are left out."""
    return to_toml({"interface": interface, "peer": list(peers)})


@contextlib.contextmanager
def pyvpn_pair(
    testbed: Testbed,
    directory: str | os.PathLike[str],
    mode: str,
    datapath: str = "auto",
    **overrides: Any,
) -> Iterator[tuple[Daemon, Daemon]]:
    """A running pyvpn tunnel between testbed.a and testbed.b; stopped on exit."""
    path_a, path_b = write_pair_configs(directory, mode, datapath, **overrides)
    with start_pyvpn(testbed.a, path_a) as peer_a, start_pyvpn(testbed.b, path_b) as peer_b:
        yield peer_a, peer_b
