"""Bring a tunnel up and run it until told to stop, then tear down everything it
made, in reverse order, whatever happens. Two ways up: `pyvpn up` sets up the
whole tunnel from a config (device, addresses, routes, DNS, hooks); `pyvpn-wg`
only the device, for wg-quick to configure over UAPI. Told to stop by SIGINT or
SIGTERM, and under pyvpn-wg also by the device's deletion.

What a running tunnel does is the control plane's: the UAPI server
(control/uapi_server.py) with its set requests (control/set_request.py),
endpoint names (control/reresolve.py), SaveConfig (control/save_config.py),
and following a device set up by others (control/follow_link.py)."""

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

import uvloop

from tunnel.control import save_config, uapi_client, uapi_server, wg_quick
from tunnel.control.config import Config, ConfigError
from tunnel.control.follow_link import following
from tunnel.control.reresolve import follow_names
from tunnel.control.running import Tunnel
from tunnel.control.status import snapshot
from tunnel.control.uapi_socket import socket_path
from tunnel.core.interface import Interface
from tunnel.fleet import agent
from tunnel.fleet.record import Admission
from tunnel.fleet.settings import FleetSettings
from tunnel.host import clock, hooks, netlink, resolvconf, sd_notify, udp
from tunnel.host.device import DeviceError, open_device
from tunnel.host.full_tunnel import FullTunnel, remove_leftovers
from tunnel.host.interrupt import sigterm_as_interrupt
from tunnel.host.privileges import PrivilegeError, drop_privileges
from tunnel.host.routing import numbered
from tunnel.host.udp import SocketError, open_socket
from tunnel.planes import dp
from tunnel.planes.base import Plane
from tunnel.planes.native import NativeShell
from tunnel.planes.python import PythonPlane
from tunnel.planes.workers import AUTO, crypto_workers
from tunnel.protocol import keys
from tunnel.protocol.constants import (
    DEFAULT_MTU,
    ETHERNET_HEADER_SIZE,
    MAX_MTU,
    MIN_MTU,
    TUNNEL_OVERHEAD,
)

log = logging.getLogger("pyvpn")


class SetupError(Exception):
    """The tunnel cannot come up here: a one-line reason for the user."""


def up(config: Config, fleet: FleetSettings | None = None) -> int:
    """Bring the tunnel up and serve it; with `fleet` (the config's [fleet] table),
    as that fleet's host."""
    for warning in config.warnings:
        log.warning("%s", warning)
    c = config.interface
    datapath = choose_datapath(config)
    with sigterm_as_interrupt():  # what setup made goes, if stopped before serve() is
        status = _up(config, datapath, fleet)
    try:
        run_hooks(config, "post_down")
    except SetupError as e:
        log.error("%s: %s", c.name, e)
        return 1
    return status


def _up(config: Config, datapath: str, fleet: FleetSettings | None) -> int:
    c = config.interface
    joining = None if fleet is None else (fleet, join_fleet(config, fleet))
    if joining is not None:
        c.addresses = [*c.addresses, joining[1].address]
    with contextlib.ExitStack() as teardown:
        remove_leftovers()
        run_hooks(config, "pre_up")  # before the device exists, as wg-quick runs PreUp
        dev_fd, sock = _open(teardown, c.name, c.l2, datapath, c.listen_port)
        mtu = tunnel_mtu(config)
        iface = Interface(
            c.private_key,
            l2=c.l2,
            mtu=mtu,
            wall_offset=time.time() - clock.now(),
            external_transport=datapath == "native",
            mac_ageing=c.mac_ageing,
        )
        for peer in config.peers:
            iface.add_peer(peer)
        full_tunnel = FullTunnel(c.name, sock, c.addresses)
        try:
            # The core's table, not the config's lists: a network listed twice is routed once.
            routes = set() if c.table == "off" else iface.routes.networks()
            netlink.configure(c.name, mtu, c.addresses, routes, c.bridge, numbered(c.table))
            if c.fwmark:
                udp.set_mark(sock, c.fwmark)
            if c.table == "auto":
                teardown.callback(full_tunnel.remove)
                full_tunnel.fit(routes)
            if c.dns:
                resolvconf.add(c.name, c.dns)
                teardown.callback(resolvconf.delete, c.name)
        except (netlink.LinkError, resolvconf.ResolvconfError) as e:
            raise SetupError(str(e)) from None
        tunnel = Tunnel(
            name=c.name,
            iface=iface,
            plane=_plane(datapath, iface, dev_fd, sock, c.workers),
            listen_port=sock.getsockname()[1],
            table=c.table,
            full_tunnel=full_tunnel,
            addresses=c.addresses,
            bridge=c.bridge,
            user=c.user,
            config=config,
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(serve(tunnel, fleet=joining))


def join_fleet(config: Config, fleet: FleetSettings) -> Admission:
    """The host's own admission, which gives it its address; SetupError if it has none."""
    c = config.interface
    if not any(c.private_key):
        raise SetupError("a fleet host needs its private key: the fleet knows it by its public key")
    try:
        own = agent.own_admission(fleet, keys.public_key(c.private_key))
    except agent.NotAdmitted as e:
        raise SetupError(str(e)) from None
    if own.mode != c.mode:
        raise SetupError(f"admitted as a {own.mode} host, but {config.path} says mode {c.mode}")
    log.info("%s: fleet %s: this is %s, %s", c.name, fleet.prefix, own.name, own.address)
    return own


def up_device(
    name: str, ready: Callable[[], None], wanted: str = "auto", workers: int | str = AUTO
) -> int:
    """pyvpn-wg, wireguard-go's part under wg-quick: a tun device (down, MTU 1420 as
    wireguard-go's DefaultMTU) and its UAPI socket, with no key, no peers, no
    address and no route; everything else comes over UAPI. Serves until SIGINT,
    SIGTERM or the device's deletion; `ready` runs once the socket answers.
    `wanted` is the data plane and `workers` its crypto workers, as a config's
    `datapath` and `workers` give them."""
    datapath = datapath_for(wanted)
    if datapath is None:
        raise SetupError(f"PYVPN_DATAPATH={NATIVE_MISSING}")
    with sigterm_as_interrupt(), contextlib.ExitStack() as teardown:
        dev_fd, sock = _open(teardown, name, False, datapath, 0)
        try:
            netlink.set_mtu(name, DEFAULT_MTU)
        except netlink.LinkError as e:
            raise SetupError(str(e)) from None
        iface = Interface(
            bytes(32),  # none (noise.StaticIdentity): no handshakes until `wg set` gives one
            mtu=DEFAULT_MTU,
            wall_offset=time.time() - clock.now(),
            external_transport=datapath == "native",
        )
        tunnel = Tunnel(
            name=name,
            iface=iface,
            plane=_plane(datapath, iface, dev_fd, sock, workers),
            listen_port=sock.getsockname()[1],
            table="off",  # wg-quick routes, from `wg show NAME allowed-ips`
            full_tunnel=FullTunnel(name, sock, []),
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(serve(tunnel, ready, follow_device=True))


def _open(
    teardown: contextlib.ExitStack, name: str, l2: bool, datapath: str, listen_port: int
) -> tuple[int, socket.socket]:
    """The device and the UDP socket, closed by `teardown`; refused while another
    tunnel or device holds the name."""
    # Netlink work happens before the event loop starts: pyroute2 runs its own
    # asyncio loop, which cannot nest inside uvloop.
    try:
        uapi_client.remove_stale(name)
    except FileExistsError as e:
        raise SetupError(str(e)) from None
    if netlink.link_exists(name):
        raise SetupError(f"a device named {name} already exists")
    try:
        extra_flags = dp.device_open_flags(l2) if datapath == "native" else 0
        dev_fd = open_device(name, l2, extra_flags)
    except DeviceError as e:
        raise SetupError(str(e)) from None
    # Closing the fd deletes the device with its addresses and routes.
    teardown.callback(os.close, dev_fd)
    try:
        sock = open_socket(listen_port)
    except SocketError as e:
        raise SetupError(str(e)) from None
    teardown.callback(sock.close)
    return dev_fd, sock


def _plane(
    datapath: str, iface: Interface, dev_fd: int, sock: socket.socket, workers: int | str
) -> Plane:
    if datapath == "native":
        return NativeShell(iface, dev_fd, sock, crypto_workers(workers))
    return PythonPlane(iface, dev_fd, sock)


def tunnel_mtu(config: Config) -> int:
    """The config's mtu, or as wg-quick picks it: the underlay's MTU toward the
    endpoints less what the tunnel adds (80 bytes, tap 94), so a PPPoE or a jumbo
    underlay gets a tunnel that fits it."""
    c = config.interface
    if c.mtu is not None:
        return c.mtu
    underlay = netlink.underlay_mtu(p.endpoint[0] for p in config.peers if p.endpoint)
    overhead = TUNNEL_OVERHEAD + (ETHERNET_HEADER_SIZE if c.l2 else 0)
    mtu = min(max(underlay - overhead, MIN_MTU), MAX_MTU)
    if mtu < 1280 and any(a.version == 6 for a in c.addresses):
        raise SetupError(
            f"the underlay's MTU ({underlay}) leaves {mtu} for the tunnel, and IPv6 addresses "
            "need 1280: give mtu in the config"
        )
    log.info("%s: MTU %d (the underlay's %d less %d)", c.name, mtu, underlay, overhead)
    return mtu


NATIVE_MISSING = "native, but the native module is not built (run scripts/setup)"


def datapath_for(wanted: str) -> str | None:
    """The plane that `wanted` ("auto", "native" or "python") runs: "auto" means
    native when the module is built. None for native without it, which the
    caller refuses, so the user learns why instead of getting a slow tunnel."""
    if wanted == "python" or (wanted == "auto" and not dp.available()):
        return "python"
    return "native" if dp.available() else None


def choose_datapath(config: Config) -> str:
    datapath = datapath_for(config.interface.datapath)
    if datapath is None:
        raise ConfigError(config.path, "interface.datapath", NATIVE_MISSING)
    return datapath


async def serve(
    tunnel: Tunnel,
    ready: Callable[[], None] | None = None,
    follow_device: bool = False,
    fleet: tuple[FleetSettings, Admission] | None = None,
) -> int:
    """Run the data plane and the UAPI socket until SIGINT or SIGTERM, or (with
    `follow_device`, for a device set up by others) until the device is deleted,
    following its MTU meanwhile; with `fleet`, the fleet's agent too."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    name, plane = tunnel.name, tunnel.plane
    async with contextlib.AsyncExitStack() as teardown:
        # First: a stop asked for while the rest comes up is taken once it is up,
        # and tears it all down (a client may act as soon as the UAPI socket answers).
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            teardown.callback(loop.remove_signal_handler, sig)
        await teardown.enter_async_context(uapi_server.serving(tunnel))
        if tunnel.user is not None:
            # Setup is done; before plane.start, whose threads inherit the capabilities.
            try:
                drop_privileges(tunnel.user, socket_path(name))
            except PrivilegeError as e:
                raise SetupError(str(e)) from None
        plane.start(loop)
        teardown.callback(plane.stop)
        names = loop.create_task(follow_names(tunnel))
        teardown.callback(names.cancel)
        if fleet is not None:
            settings, own = fleet
            member = agent.Agent(tunnel, settings, own)
            await teardown.enter_async_context(agent.running(member))
        if follow_device:
            try:
                teardown.enter_context(following(tunnel, stop.set))
            except OSError as e:
                raise SetupError(f"cannot follow the device: {e.strerror}") from None
        status = snapshot(tunnel)
        up = (
            f"{name} up: {status['mode']} mode, UDP port {status['listen_port']}, "
            f"{status['datapath']} data plane, public key {status['public_key'] or '(none yet)'}"
        )
        # After addresses, routes and DNS, as wg-quick runs PostUp; in a thread, so
        # that the UAPI answers a hook's `wg set %i ...`.
        if tunnel.config is not None:
            await loop.run_in_executor(None, run_hooks, tunnel.config, "post_up")
        log.info("%s", up)
        sd_notify.notify(f"READY=1\nSTATUS={up}")
        if ready is not None:
            ready()
        await stop.wait()
        log.info("%s: shutting down", name)
        sd_notify.notify("STOPPING=1")
        if tunnel.config is not None:
            try:
                # Unlike wg-quick, a failed PreDown does not keep a stopping tunnel up.
                await loop.run_in_executor(None, run_hooks, tunnel.config, "pre_down")
            except SetupError as e:
                log.warning("%s: %s", name, e)
            if tunnel.config.interface.save_config:
                await save_config.save(tunnel, tunnel.config)
    return 0


def run_hooks(config: Config, hook: str) -> None:
    c = config.interface
    try:
        hooks.run(wg_quick.INTERFACE[hook], c.hooks.get(hook, []), c.name)
    except hooks.HookError as e:
        raise SetupError(str(e)) from None
