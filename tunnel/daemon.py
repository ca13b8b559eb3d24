"""`pyvpn up`: set the tunnel up from a config, serve until SIGINT/SIGTERM, and
tear down everything it made, in reverse order, whatever happens."""

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass, field

import uvloop

from tunnel.control import uapi, uapi_client
from tunnel.control.config import Config, ConfigError
from tunnel.control.reresolve import follow_names
from tunnel.control.status import snapshot
from tunnel.core import reconfig
from tunnel.core.interface import Interface
from tunnel.host import clock, netlink, sd_notify, udp
from tunnel.host.device import DeviceError, open_device
from tunnel.host.full_tunnel import FullTunnel, remove_leftovers
from tunnel.host.privileges import PrivilegeError, drop_privileges
from tunnel.host.routing import InterfaceAddress
from tunnel.host.udp import SocketError, open_socket
from tunnel.planes import dp
from tunnel.planes.base import Plane
from tunnel.planes.native import NativeShell
from tunnel.planes.python import PythonPlane
from tunnel.protocol.constants import ETHERNET_HEADER_SIZE, MAX_MTU, MIN_MTU, TUNNEL_OVERHEAD

log = logging.getLogger("pyvpn")


class SetupError(Exception):
    """The tunnel cannot come up here: a one-line reason for the user."""


def up(config: Config) -> int:
    for warning in config.warnings:
        log.warning("%s", warning)
    c = config.interface
    datapath = choose_datapath(config)
    with contextlib.ExitStack() as teardown:
        # Netlink work happens before the event loop starts: pyroute2 runs its own
        # asyncio loop, which cannot nest inside uvloop.
        try:
            uapi_client.remove_stale(c.name)
        except FileExistsError as e:
            raise SetupError(str(e)) from None
        if netlink.link_exists(c.name):
            raise SetupError(f"a device named {c.name} already exists")
        remove_leftovers()
        try:
            extra_flags = dp.device_open_flags(c.l2) if datapath == "native" else 0
            dev_fd = open_device(c.name, c.l2, extra_flags)
        except DeviceError as e:
            raise SetupError(str(e)) from None
        # Closing the fd deletes the device with its addresses and routes.
        teardown.callback(os.close, dev_fd)
        try:
            sock = open_socket(c.listen_port)
        except SocketError as e:
            raise SetupError(str(e)) from None
        teardown.callback(sock.close)
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
            netlink.configure(c.name, mtu, c.addresses, routes, c.bridge, _numbered(c.table))
            if c.fwmark:
                udp.set_mark(sock, c.fwmark)
            if c.table == "auto":
                teardown.callback(full_tunnel.remove)
                full_tunnel.fit(routes)
        except netlink.LinkError as e:
            raise SetupError(str(e)) from None
        plane: Plane
        if datapath == "native":
            plane = NativeShell(iface, dev_fd, sock)
        else:
            plane = PythonPlane(iface, dev_fd, sock)
        tunnel = Tunnel(
            c.name,
            c.mode,
            iface,
            plane,
            sock.getsockname()[1],
            c.table,
            full_tunnel,
            c.addresses,
            c.bridge,
            c.user,
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(serve(tunnel))


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


def choose_datapath(config: Config) -> str:
    """ "auto" means native when the module is built; asking for native without it
    is a config error, so the user learns why instead of getting a slow tunnel."""
    wanted = config.interface.datapath
    if wanted == "python" or (wanted == "auto" and not dp.available()):
        return "python"
    if not dp.available():
        raise ConfigError(
            config.path,
            "interface.datapath",
            "native, but the native module is not built (run scripts/setup)",
        )
    return "native"


async def serve(tunnel: Tunnel) -> int:
    """Run the data plane and the UAPI socket until SIGINT or SIGTERM."""
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
        )

    with contextlib.ExitStack() as teardown:
        server = await _serve_uapi(tunnel, status)
        teardown.callback(_remove_socket, name)
        teardown.callback(server.close)
        if tunnel.user is not None:
            # Setup is done; before plane.start, whose threads inherit the capabilities.
            try:
                drop_privileges(tunnel.user, uapi.socket_path(name))
            except PrivilegeError as e:
                raise SetupError(str(e)) from None
        plane.start(loop)
        teardown.callback(plane.stop)
        names = loop.create_task(follow_names(name, tunnel.iface, plane, tunnel.setting))
        teardown.callback(names.cancel)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            teardown.callback(loop.remove_signal_handler, sig)
        up = (
            f"{name} up: {tunnel.mode} mode, UDP port {tunnel.listen_port}, "
            f"{plane.name} data plane, public key {status()['public_key']}"
        )
        log.info("%s", up)
        sd_notify.notify(f"READY=1\nSTATUS={up}")
        await stop.wait()
        log.info("%s: shutting down", name)
        sd_notify.notify("STOPPING=1")
    return 0


async def _serve_uapi(tunnel: Tunnel, status) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = (await reader.readline()).decode(errors="replace").strip()
                if not line:
                    break
                # An operation's arguments end at an empty line; get has none.
                args = []
                while arg := (await reader.readline()).decode(errors="replace").strip():
                    args.append(arg)
                if line == "get=1":
                    reply = uapi.get_response(
                        tunnel.iface, tunnel.listen_port, udp.mark(tunnel.plane.sock)
                    )
                elif line == "get=pyvpn":
                    reply = uapi.status_response(status())
                elif line == "set=1":
                    async with tunnel.setting:
                        reply = await _set(tunnel, args)
                else:
                    reply = uapi.error_response(uapi.EPROTO)
                writer.write(reply.encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    uapi.SOCKET_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = uapi.socket_path(tunnel.name)
    old_umask = os.umask(0o077)  # the socket hands out the private key: root only
    try:
        return await asyncio.start_unix_server(handle, path=str(path))
    finally:
        os.umask(old_umask)


async def _set(tunnel: Tunnel, args: list[str]) -> str:
    """`wg set`, `wg setconf`, `wg syncconf`: checked whole, then applied to the core,
    the plane, the socket's fwmark and the kernel's routes."""
    name, iface, plane, full_tunnel = tunnel.name, tunnel.iface, tunnel.plane, tunnel.full_tunnel
    try:
        change = uapi.parse_set(args)
        fwmark = udp.mark(plane.sock)
        uapi.check(iface, change, fwmark, bool(full_tunnel.versions), tunnel.table == "auto")
        _set_socket(tunnel, change)
    except (reconfig.Refused, udp.SocketError) as e:
        log.warning("%s: set refused: %s", name, e)
        return uapi.set_error_response(e.errno)
    except OSError as e:  # setting the fwmark, or the new socket's setup
        log.warning("%s: set refused: socket: %s", name, e.strerror)
        return uapi.set_error_response(e.errno or errno.EIO)
    before = iface.routes.networks()
    applied = reconfig.apply(iface, change, clock.now())
    plane.reconfigured(applied)
    after = iface.routes.networks()
    log.info(
        "%s: set: peers added %d, removed %d, changed %d",
        name,
        len(applied.added),
        len(applied.removed),
        len(applied.updated),
    )

    def follow() -> None:
        if tunnel.table == "off":
            return
        netlink.update_routes(name, after - before, before - after, _numbered(tunnel.table), after)
        if tunnel.table == "auto":
            full_tunnel.fit(after)

    # pyroute2 runs its own event loop: in a worker thread, not inside this one.
    try:
        await asyncio.get_running_loop().run_in_executor(None, follow)
    except netlink.LinkError as e:
        log.warning("%s: %s", name, e)
        return uapi.set_error_response(e.errno)
    return uapi.error_response(0)


def _numbered(table: str | int) -> int | None:
    """netlink's table: a number of the user's, or None for wg-quick's "auto"."""
    return table if isinstance(table, int) else None


def _set_socket(tunnel: Tunnel, change: reconfig.Change) -> None:
    """The socket's part of a set request: its fwmark and its port. A new port gets
    a new socket, bound (or refused) before anything else changes."""
    sock = tunnel.plane.sock
    new = None
    if change.listen_port is not None and change.listen_port != tunnel.listen_port:
        new = udp.open_socket(change.listen_port)
    try:
        if change.fwmark is not None:
            udp.set_mark(sock, change.fwmark)
        if new is not None:
            udp.set_mark(new, udp.mark(sock))
    except OSError:
        if new is not None:
            new.close()
        raise
    if new is not None:
        tunnel.plane.replace_socket(new)
        tunnel.listen_port = sock.getsockname()[1]
        log.info("%s: now listening on UDP port %d", tunnel.name, tunnel.listen_port)


def _remove_socket(name: str) -> None:
    # PermissionError: we dropped root; the janitor of privileges.py removes it.
    with contextlib.suppress(FileNotFoundError, PermissionError):
        os.unlink(uapi.socket_path(name))
