"""`pyvpn up`: set the tunnel up from a config, serve until SIGINT/SIGTERM, and
tear down everything it made, in reverse order, whatever happens."""

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import uvloop

from tunnel.control import save_config, show, uapi, uapi_client, wg_quick
from tunnel.control.config import Config, ConfigError
from tunnel.control.reresolve import follow_names
from tunnel.control.set_request import set_request
from tunnel.control.status import snapshot
from tunnel.control.uapi_socket import SOCKET_DIR, socket_path
from tunnel.core.interface import Interface
from tunnel.host import clock, hooks, netlink, resolvconf, sd_notify, udp
from tunnel.host.device import DeviceError, open_device
from tunnel.host.full_tunnel import FullTunnel, remove_leftovers
from tunnel.host.link_watch import LinkWatch
from tunnel.host.privileges import PrivilegeError, drop_privileges
from tunnel.host.routing import InterfaceAddress, numbered
from tunnel.host.udp import SocketError, open_socket
from tunnel.planes import dp
from tunnel.planes.base import Plane
from tunnel.planes.native import NativeShell
from tunnel.planes.python import PythonPlane
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


def up(config: Config) -> int:
    for warning in config.warnings:
        log.warning("%s", warning)
    c = config.interface
    datapath = choose_datapath(config)
    status = _up(config, datapath)
    try:
        run_hooks(config, "post_down")
    except SetupError as e:
        log.error("%s: %s", c.name, e)
        return 1
    return status


def _up(config: Config, datapath: str) -> int:
    c = config.interface
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
            c.name,
            c.mode,
            iface,
            _plane(datapath, iface, dev_fd, sock),
            sock.getsockname()[1],
            c.table,
            full_tunnel,
            c.addresses,
            c.bridge,
            c.user,
            config,
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(serve(tunnel))


def up_device(name: str, ready: Callable[[], None], wanted: str = "auto") -> int:
    """pyvpn-wg, wireguard-go's part under wg-quick: a tun device (down, MTU 1420 as
    wireguard-go's DefaultMTU) and its UAPI socket, with no key, no peers, no
    address and no route; everything else comes over UAPI. Serves until SIGINT,
    SIGTERM or the device's deletion; `ready` runs once the socket answers.
    `wanted` is the data plane, as a config's `datapath` gives it."""
    datapath = datapath_for(wanted)
    if datapath is None:
        raise SetupError(f"PYVPN_DATAPATH={NATIVE_MISSING}")
    with contextlib.ExitStack() as teardown:
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
            name,
            "tun",
            iface,
            _plane(datapath, iface, dev_fd, sock),
            sock.getsockname()[1],
            "off",  # wg-quick routes, from `wg show NAME allowed-ips`
            FullTunnel(name, sock, []),
            [],
            None,
            None,
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


def _plane(datapath: str, iface: Interface, dev_fd: int, sock: socket.socket) -> Plane:
    if datapath == "native":
        return NativeShell(iface, dev_fd, sock)
    return PythonPlane(iface, dev_fd, sock)


@dataclass
class Tunnel:
    """A tunnel that is up, as serving it needs it."""

    name: str
    mode: str
    iface: Interface
    plane: Plane
    listen_port: int
    table: str | int  # config.InterfaceConfig.table
    full_tunnel: FullTunnel
    addresses: list[InterfaceAddress]
    bridge: str | None
    user: str | None
    # For its hooks and SaveConfig; none under pyvpn-wg, where wg-quick does both.
    config: Config | None = None
    # One set request at a time: each ends with netlink work in an executor thread.
    setting: asyncio.Lock = field(default_factory=asyncio.Lock)


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
    tunnel: Tunnel, ready: Callable[[], None] | None = None, follow_device: bool = False
) -> int:
    """Run the data plane and the UAPI socket until SIGINT or SIGTERM, or (with
    `follow_device`, for a device set up by others) until the device is deleted,
    following its MTU meanwhile."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    name, plane = tunnel.name, tunnel.plane

    def status() -> dict:
        plane.refresh()
        return snapshot(
            tunnel.iface,
            name,
            tunnel.listen_port,
            plane.name,
            clock.now(),
            udp.mark(plane.sock),
            tunnel.table,
            tunnel.full_tunnel.versions,
            tunnel.addresses,
            tunnel.bridge,
            tunnel.user,
            plane.own_stats(),
        )

    with contextlib.ExitStack() as teardown:
        server = await _serve_uapi(tunnel, status)
        teardown.callback(_remove_socket, name)
        teardown.callback(server.close)
        if tunnel.user is not None:
            # Setup is done; before plane.start, whose threads inherit the capabilities.
            try:
                drop_privileges(tunnel.user, socket_path(name))
            except PrivilegeError as e:
                raise SetupError(str(e)) from None
        plane.start(loop)
        teardown.callback(plane.stop)
        names = loop.create_task(follow_names(name, tunnel.iface, plane, tunnel.setting))
        teardown.callback(names.cancel)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            teardown.callback(loop.remove_signal_handler, sig)
        if follow_device:
            teardown.enter_context(_following(tunnel, loop, stop))
        up = (
            f"{name} up: {tunnel.mode} mode, UDP port {tunnel.listen_port}, "
            f"{plane.name} data plane, public key {status()['public_key'] or '(none yet)'}"
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
                # pyroute2 cannot run inside the event loop it would use itself.
                configured = tunnel.config.interface.addresses
                addresses = await loop.run_in_executor(None, _addresses_now, name, configured)
                save(tunnel, tunnel.config, addresses)
    return 0


@contextlib.contextmanager
def _following(
    tunnel: Tunnel, loop: asyncio.AbstractEventLoop, stop: asyncio.Event
) -> Iterator[None]:
    """The device's deletion stops the tunnel; a new MTU reaches the plane (padding,
    `pyvpn show`)."""
    try:
        watch = LinkWatch(tunnel.name)
    except OSError as e:
        raise SetupError(f"cannot follow the device: {e.strerror}") from None

    def readable() -> None:
        state = watch.read()
        if state.mtu is not None and state.mtu != tunnel.iface.mtu:
            try:
                tunnel.plane.set_mtu(state.mtu)
                log.info("%s: MTU now %d", tunnel.name, state.mtu)
            except OSError as e:
                log.warning("%s: MTU %d not followed: %s", tunnel.name, state.mtu, e.strerror)
        if state.deleted:
            log.info("%s: the device was deleted", tunnel.name)
            stop.set()

    loop.add_reader(watch.fileno(), readable)
    try:
        yield
    finally:
        loop.remove_reader(watch.fileno())
        watch.close()


def run_hooks(config: Config, hook: str) -> None:
    c = config.interface
    try:
        hooks.run(wg_quick.INTERFACE[hook], c.hooks.get(hook, []), c.name)
    except hooks.HookError as e:
        raise SetupError(str(e)) from None


def _addresses_now(name: str, configured: list[InterfaceAddress]) -> list[InterfaceAddress] | None:
    try:
        return netlink.addresses(name, configured)
    except netlink.LinkError as e:  # the device is gone: the file's addresses stay
        log.warning("%s: SaveConfig: %s", name, e)
        return None


def save(tunnel: Tunnel, config: Config, addresses: list[InterfaceAddress] | None) -> None:
    """SaveConfig, as wg-quick does it at down: after PreDown, before teardown."""
    plane, iface = tunnel.plane, tunnel.iface
    plane.refresh()
    data = save_config.running_data(
        config, iface, tunnel.listen_port, udp.mark(plane.sock), iface.mtu, addresses
    )
    try:
        save_config.write(config, data)
    except (OSError, ValueError) as e:
        log.error("%s: SaveConfig: cannot write %s: %s", tunnel.name, config.path, e)
        return
    log.info("%s: SaveConfig: wrote the running config to %s", tunnel.name, config.path)


async def _serve_uapi(tunnel: Tunnel, status) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await uapi.read_line(reader)
                if line == "":
                    break
                # An operation's arguments end at an empty line; get has none.
                args, too_long = [], line is None
                while (arg := await uapi.read_line(reader)) != "":
                    if arg is None:
                        too_long = True
                    else:
                        args.append(arg)
                if too_long:
                    log.warning("%s: UAPI: a line over 64 KiB, operation refused", tunnel.name)
                    reply = (
                        uapi.set_error_response(errno.EMSGSIZE)
                        if line == "set=1"
                        else uapi.error_response(errno.EMSGSIZE)
                    )
                elif line == "get=1":
                    reply = uapi.get_response(
                        tunnel.iface, tunnel.listen_port, udp.mark(tunnel.plane.sock)
                    )
                elif line == "get=pyvpn":
                    reply = uapi.status_response(status())
                elif line == "get=pyvpn_text":
                    reply = uapi.text_response(show.render(status()))
                elif line == "set=1":
                    async with tunnel.setting:
                        reply = await set_request(tunnel, args)
                else:
                    reply = uapi.error_response(uapi.EPROTO)
                writer.write(reply.encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    SOCKET_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = socket_path(tunnel.name)
    old_umask = os.umask(0o077)  # the socket hands out the private key: root only
    try:
        return await asyncio.start_unix_server(handle, path=str(path))
    finally:
        os.umask(old_umask)


def _remove_socket(name: str) -> None:
    # PermissionError: we dropped root; the janitor of privileges.py removes it.
    with contextlib.suppress(FileNotFoundError, PermissionError):
        os.unlink(socket_path(name))
