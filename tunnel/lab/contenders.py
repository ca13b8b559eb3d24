"""The tunnels `pyvpn bench` compares, each able to come up between testbed.a and testbed.b.

A contender's `up()` yields where to measure (client and server namespaces, the
server's address through the tunnel, the pids whose CPU time counts) and tears
its tunnel down on exit. It raises `Skip` when it cannot run here at all.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunnel.protocol import keys

from . import nebula, tinc
from .openvpn import DATA_OVERHEAD, make_pki, openvpn_argv, wait_ready
from .testbed import (
    EXIT_CONFIG,
    INNER_A,
    INNER_B,
    Daemon,
    Namespace,
    Testbed,
    TunnelStartError,
    WgPeer,
    device_name,
    pyvpn_env,
    pyvpn_pair,
    pyvpn_status,
    start_daemon,
    start_wireguard_go,
    wait_for,
    wait_reachable,
    wireguard_go,
    wireguard_go_version,
)

IPV4_HEADER, IPV6_HEADER, UDP_HEADER, ETHERNET_HEADER = 20, 40, 8, 14
# type + receiver index + counter (16) and the Poly1305 tag (16); padding to 16 comes on top.
WIREGUARD_OVERHEAD = 32
INNER_PREFIX = 24


class Skip(Exception):
    """This contender cannot run on this machine; the message says why."""


def skip_unbuilt(exc: TunnelStartError, datapath: str) -> None:
    """`pyvpn up` refuses a data plane that is not built with status 2: a Skip."""
    if exc.returncode == EXIT_CONFIG and datapath in exc.output.lower():
        raise Skip(_last_line(exc.output)) from None


def check_plane(name: str, datapath: str) -> None:
    """A label must not lie: measure only the data plane that really runs."""
    running = pyvpn_status(name).get("datapath")
    if running != datapath:
        raise Skip(f"asked for the {datapath} data plane, `pyvpn show` says {running}")


@dataclass(frozen=True)
class Endpoints:
    client: Namespace
    server: Namespace
    server_addr: str
    # The tunnel processes whose CPU time counts: the client side's, then the server's.
    pids: list[int] = field(default_factory=list)


def header_overhead(mode: str, transport: int = WIREGUARD_OVERHEAD, ipv6: bool = False) -> int:
    """Outer bytes per inner packet: underlay IP + UDP + transport (+ Ethernet for tap)."""
    ethernet = ETHERNET_HEADER if mode == "tap" else 0
    return (IPV6_HEADER if ipv6 else IPV4_HEADER) + UDP_HEADER + transport + ethernet


@dataclass(frozen=True)
class Contender:
    name: str
    family: str  # groups tun and tap of one implementation in the chart
    mode: str  # "raw", "tun" or "tap"
    tools: tuple[str, ...] = ()

    def missing_tool(self) -> str | None:
        for tool in self.tools:
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        return None

    def overhead_bytes(self) -> int | None:
        return header_overhead(self.mode)

    def version(self) -> str:
        """What exactly runs, for the table, the JSON and the chart."""
        return ""

    @contextlib.contextmanager
    def up(self, tb: Testbed, workdir: Path, mtu: int) -> Iterator[Endpoints]:
        raise NotImplementedError
        yield  # pragma: no cover


class Veth(Contender):
    def overhead_bytes(self) -> int | None:
        return 0

    def version(self) -> str:
        return f"Linux {platform.release()}"

    @contextlib.contextmanager
    def up(self, tb: Testbed, workdir: Path, mtu: int) -> Iterator[Endpoints]:
        yield Endpoints(tb.a, tb.b, tb.b_addr)


@dataclass(frozen=True)
class Pyvpn(Contender):
    datapath: str = "python"
    crypto_workers: int | None = None  # the config's `workers`; None: its default, auto

    def missing_tool(self) -> str | None:
        if importlib.util.find_spec("tunnel.__main__") is None:
            return "`python -m tunnel up` is not available in this checkout"
        return None

    def version(self) -> str:
        workers = self.crypto_workers
        crypto = "" if workers is None else f", {workers} crypto worker{'s' * (workers != 1)}"
        return f"pyvpn {pyvpn_version()}, {self.datapath} plane{crypto}"

    @contextlib.contextmanager
    def up(self, tb: Testbed, workdir: Path, mtu: int) -> Iterator[Endpoints]:
        workers = {} if self.crypto_workers is None else {"workers": self.crypto_workers}
        with contextlib.ExitStack() as stack:
            try:
                peers = stack.enter_context(
                    pyvpn_pair(
                        tb, workdir, self.mode, self.datapath, mtu=mtu,
                        interface_a=workers, interface_b=workers,
                    )
                )  # fmt: skip
            except TunnelStartError as exc:
                skip_unbuilt(exc, self.datapath)
                raise
            check_plane(peers[0].name, self.datapath)
            running = pyvpn_status(peers[0].name).get("crypto_workers")
            if self.crypto_workers not in (None, running):
                raise Skip(f"asked for {self.crypto_workers} crypto workers, it runs {running}")
            wait_reachable(tb.a, INNER_B)
            yield Endpoints(tb.a, tb.b, INNER_B, [p.pid for p in peers])


@dataclass(frozen=True)
class WireguardGo(Contender):
    build: str = "current"  # testbed.WIREGUARD_GO_BUILDS

    def missing_tool(self) -> str | None:
        try:
            wireguard_go(self.build)
        except FileNotFoundError as exc:
            return str(exc)
        return super().missing_tool()

    def version(self) -> str:
        return f"wireguard-go {wireguard_go_version(self.build)}"

    @contextlib.contextmanager
    def up(self, tb: Testbed, workdir: Path, mtu: int) -> Iterator[Endpoints]:
        private = keys.generate_private_key(), keys.generate_private_key()
        sides = ((tb.a, tb.a_addr, INNER_A), (tb.b, tb.b_addr, INNER_B))
        with contextlib.ExitStack() as stack:
            daemons: list[Daemon] = []
            for i, (ns, _, inner) in enumerate(sides):
                _, other_addr, other_inner = sides[1 - i]
                peer = WgPeer(
                    keys.public_key(private[1 - i]), [f"{other_inner}/32"], f"{other_addr}:51820"
                )
                name = device_name("wg", "ab"[i])
                daemon = start_wireguard_go(
                    ns, name, private[i], 51820, [peer], [f"{inner}/{INNER_PREFIX}"], mtu=mtu,
                    build=self.build,
                )  # fmt: skip
                daemons.append(stack.enter_context(daemon))
            wait_reachable(tb.a, INNER_B)
            yield Endpoints(tb.a, tb.b, INNER_B, [d.pid for d in daemons])


# The floor's framing: a 12-byte nonce before each sealed packet, and the tag.
FLOOR_OVERHEAD = 12 + 16


class PythonFloor(Contender):
    """tunnel/lab/floor.py on both sides: the least a Python tunnel costs."""

    def overhead_bytes(self) -> int | None:
        return header_overhead(self.mode, FLOOR_OVERHEAD)

    def version(self) -> str:
        return f"a reference, not a VPN: Python {platform.python_version()}, uvloop"

    @contextlib.contextmanager
    def up(self, tb: Testbed, workdir: Path, mtu: int) -> Iterator[Endpoints]:
        key = os.urandom(32)
        sides = ((tb.a, tb.a_addr, INNER_A), (tb.b, tb.b_addr, INNER_B))
        with contextlib.ExitStack() as stack:
            daemons: list[Daemon] = []
            for i, (ns, _, inner) in enumerate(sides):
                other = sides[1 - i][1]
                name = device_name("pf", "ab"[i])
                argv = [sys.executable, "-m", "tunnel.lab.floor", name, f"{inner}/{INNER_PREFIX}",
                        str(mtu), "51820", f"{other}:51820", key.hex()]  # fmt: skip
                daemon = stack.enter_context(start_daemon(ns, argv, name, pyvpn_env()))
                wait_for(daemon, lambda d=daemon: f"{d.name} up" in d.output(), "it is up", 10)
                daemons.append(daemon)
            wait_reachable(tb.a, INNER_B)
            yield Endpoints(tb.a, tb.b, INNER_B, [d.pid for d in daemons])


class OpenVPN(Contender):
    def overhead_bytes(self) -> int | None:
        return header_overhead(self.mode, DATA_OVERHEAD)

    def version(self) -> str:
        # "OpenVPN 2.6.3 x86_64-pc-linux-gnu [SSL (OpenSSL)] ..." (exit status 1)
        out = subprocess.run(["openvpn", "--version"], capture_output=True, text=True).stdout
        words = out.split()
        return " ".join(words[:2]) if len(words) > 1 else "OpenVPN"

    @contextlib.contextmanager
    def up(self, tb: Testbed, workdir: Path, mtu: int) -> Iterator[Endpoints]:
        pki = make_pki(workdir)
        sides = (
            (tb.a, "server", tb.a_addr, tb.b_addr, INNER_A, INNER_B),
            (tb.b, "client", tb.b_addr, tb.a_addr, INNER_B, INNER_A),
        )
        with contextlib.ExitStack() as stack:
            daemons = []
            for i, (ns, role, local, remote, inner, inner_peer) in enumerate(sides):
                name = device_name(f"ov{self.mode}", "ab"[i])
                argv = openvpn_argv(
                    name=name, mode=self.mode, role=role, pki=pki, local=local, remote=remote,
                    inner=inner, inner_peer=inner_peer, mtu=mtu,
                )  # fmt: skip
                daemons.append(stack.enter_context(start_daemon(ns, argv, name)))
            wait_ready(daemons)
            wait_reachable(tb.a, INNER_B)
            yield Endpoints(tb.a, tb.b, INNER_B, [d.pid for d in daemons])


class Nebula(Contender):
    def missing_tool(self) -> str | None:
        for tool in ("nebula", "nebula-cert"):
            if shutil.which(nebula.binary(tool)) is None:
                return f"{tool} is not installed (run scripts/setup)"
        return None

    def overhead_bytes(self) -> int | None:
        return header_overhead(self.mode, nebula.DATA_OVERHEAD)

    def version(self) -> str:
        return nebula.version()

    @contextlib.contextmanager
    def up(self, tb: Testbed, workdir: Path, mtu: int) -> Iterator[Endpoints]:
        inner = {"a": f"{INNER_A}/{INNER_PREFIX}", "b": f"{INNER_B}/{INNER_PREFIX}"}
        nebula.make_certs(workdir, inner)
        sides = ((tb.a, "a", tb.a_addr, INNER_A), (tb.b, "b", tb.b_addr, INNER_B))
        with contextlib.ExitStack() as stack:
            daemons = []
            for i, (ns, side, local, _) in enumerate(sides):
                _, _, remote, remote_inner = sides[1 - i]
                name = device_name("nb", side)
                config = nebula.write_config(
                    workdir, name=side, device=name, local=local, peer_inner=remote_inner,
                    peer=remote, mtu=mtu,
                )  # fmt: skip
                argv = [nebula.binary("nebula"), "-config", str(config)]
                daemons.append(stack.enter_context(start_daemon(ns, argv, name)))
            nebula.wait_ready(daemons)
            wait_reachable(tb.a, INNER_B)
            yield Endpoints(tb.a, tb.b, INNER_B, [d.pid for d in daemons])


class Tinc(Contender):
    def overhead_bytes(self) -> int | None:
        return header_overhead(self.mode, tinc.DATA_OVERHEAD)

    def version(self) -> str:
        return f"{tinc.version()} {'router' if self.mode == 'tun' else 'switch'} mode"

    @contextlib.contextmanager
    def up(self, tb: Testbed, workdir: Path, mtu: int) -> Iterator[Endpoints]:
        sides = ((tb.a, "a", tb.a_addr, INNER_A), (tb.b, "b", tb.b_addr, INNER_B))
        dirs = []
        for _, side, local, inner in sides:
            device = device_name(f"tc{self.mode}", side)
            peer = tinc.make_peer(
                workdir, name=side, device=device, mode=self.mode, local=local, inner=inner, mtu=mtu
            )
            dirs.append(peer)
        tinc.connect(dirs[0], dirs[1])
        # b first: a connects to b.
        with tinc.daemons([(tb.b, dirs[1]), (tb.a, dirs[0])]) as (b, a):
            wait_reachable(tb.a, INNER_B)
            yield Endpoints(tb.a, tb.b, INNER_B, [a.pid, b.pid])


def pyvpn_version() -> str:
    """The installed version and the checkout's commit: "0.1.0 (a5b2303)"."""
    version = importlib.metadata.version("pyvpn")
    commit = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{version} ({commit})" if commit else version


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


CONTENDERS: tuple[Contender, ...] = (
    Veth("veth", "veth", "raw"),
    *(
        Pyvpn(f"pyvpn-{mode}-{dp}", f"pyvpn {dp}", mode, datapath=dp)
        for dp in ("native", "python")
        for mode in ("tun", "tap")
    ),
    # The current build (sid's, the newest) is the one to beat; trixie's shows the
    # step between releases, and bookworm's, from before the 2023 offloads, what
    # they bought.
    WireguardGo("wireguard-go", "wireguard-go", "tun", ("wg",), build="current"),
    WireguardGo("wireguard-go-trixie", "wireguard-go trixie", "tun", ("wg",), "trixie"),
    WireguardGo("wireguard-go-bookworm", "wireguard-go bookworm", "tun", ("wg",), "bookworm"),
    PythonFloor("python-floor", "python floor", "tun"),
    OpenVPN("openvpn-tun", "openvpn", "tun", ("openvpn", "openssl")),
    OpenVPN("openvpn-tap", "openvpn", "tap", ("openvpn", "openssl")),
    Nebula("nebula", "nebula", "tun"),
    # Switch mode is tinc's L2: a learning switch, as pyvpn's tap mode is.
    Tinc("tinc-router", "tinc", "tun", ("tincd",)),
    Tinc("tinc-switch", "tinc", "tap", ("tincd",)),
)
NAMES = tuple(c.name for c in CONTENDERS)


def with_crypto_workers(contenders: list[Contender], counts: list[int]) -> list[Contender]:
    """Each native pyvpn contender once per count of crypto workers, side by side
    (so that every round measures them in turns), named for its count."""
    return [
        variant
        for c in contenders
        for variant in (
            [replace(c, name=f"{c.name}-crypto{n}", crypto_workers=n) for n in counts]
            if counts and isinstance(c, Pyvpn) and c.datapath == "native"
            else [c]
        )
    ]
