"""A set request (`wg set`, `wg setconf`, `wg syncconf`, `pyvpn reload`) as one
transaction across the socket, the kernel's routes, the full tunnel's rules, the
core and the plane: it applies whole or changes nothing, and the reply's errno
says which.

Each part that can fail is done before the core takes the change, with its undo
kept: the new socket is bound (running.bind) and the fwmark set; the routes for
the networks the change adds go in (reconfig.networks_after foresees them); the
full tunnel follows. Then the core applies it, which cannot fail once uapi.check passed,
and the plane follows; if the plane refuses, the core is put back
(reconfig.Before) and the plane follows it back. Only then does what cannot be
undone happen: the tunnel rebinds to the new socket (Tunnel.rebind), and the
routes of the networks no longer allowed go."""

import asyncio
import contextlib
import errno
import logging
import socket

from tunnel.core import reconfig
from tunnel.core.reconfig import Change, Refused
from tunnel.host import clock, netlink, udp
from tunnel.host.routing import numbered
from tunnel.protocol.allowed_ips import Network

from . import uapi
from .running import Bound, Tunnel, bind

log = logging.getLogger("pyvpn")


async def set_request(tunnel: Tunnel, args: list[str]) -> str:
    """The reply to `set=1` with these argument lines. The caller holds the
    tunnel's lock: one set request at a time."""
    loop = asyncio.get_running_loop()
    undo = contextlib.ExitStack()
    try:
        change = uapi.parse_set(args)
        mark = udp.mark(tunnel.plane.sock)
        uapi.check(
            tunnel.iface, change, mark, bool(tunnel.full_tunnel.versions), tunnel.table == "auto"
        )
        before = tunnel.iface.routes.networks()
        after = reconfig.networks_after(tunnel.iface, change)
        new = _prepare_socket(tunnel, change, undo)
        # pyroute2 runs its own event loop: in a worker thread, not inside this one.
        await loop.run_in_executor(None, _prepare_routes, tunnel, before, after, undo)
        if new is not None:
            udp.set_mark(new.sock, udp.mark(tunnel.plane.sock))  # the full tunnel's, if it took one
        applied = _apply(tunnel, change)
    except (Refused, udp.SocketError, netlink.LinkError) as e:
        log.warning("%s: set refused: %s", tunnel.name, e)
        await loop.run_in_executor(None, _undo, tunnel.name, undo)
        return uapi.set_error_response(e.errno)
    except OSError as e:  # the socket's fwmark
        log.warning("%s: set refused: socket: %s", tunnel.name, e.strerror)
        await loop.run_in_executor(None, _undo, tunnel.name, undo)
        return uapi.set_error_response(e.errno or errno.EIO)
    except Exception:
        await loop.run_in_executor(None, _undo, tunnel.name, undo)
        raise
    undo.pop_all()
    if new is not None:
        tunnel.rebind(new)
    log.info(
        "%s: set: peers added %d, removed %d, changed %d",
        tunnel.name,
        len(applied.added),
        len(applied.removed),
        len(applied.updated),
    )
    if before - after:
        await loop.run_in_executor(None, _remove_routes, tunnel, before, after)
    return uapi.error_response(0)


def _prepare_socket(tunnel: Tunnel, change: Change, undo: contextlib.ExitStack) -> Bound | None:
    """The fwmark set on the live socket, and for a new listen port a new socket,
    bound now, that takes the live socket's mark and its place at the end."""
    sock = tunnel.plane.sock
    mark = udp.mark(sock)
    undo.callback(_mark_back, sock, mark)  # the request's fwmark, or the full tunnel's
    new = None
    if change.listen_port is not None and change.listen_port != tunnel.listen_port:
        new = bind(change.listen_port)
        undo.callback(new.sock.close)
    if change.fwmark is not None and change.fwmark != mark:
        udp.set_mark(sock, change.fwmark)
    return new


def _mark_back(sock: socket.socket, mark: int) -> None:
    if udp.mark(sock) != mark:
        udp.set_mark(sock, mark)


def _prepare_routes(
    tunnel: Tunnel, before: set[Network], after: set[Network], undo: contextlib.ExitStack
) -> None:
    """Routes for the networks the change adds, and the full tunnel as `after`
    asks; blocking netlink work."""
    if tunnel.table == "off":
        return
    table, both = numbered(tunnel.table), before | after
    netlink.update_routes(tunnel.name, after - before, (), table, both)
    undo.callback(netlink.update_routes, tunnel.name, (), after - before, table, both)
    if tunnel.table == "auto":
        # Registered first: a fit refused halfway is undone from what it recorded.
        undo.callback(tunnel.full_tunnel.fit, before)
        tunnel.full_tunnel.fit(after)


def _apply(tunnel: Tunnel, change: Change) -> reconfig.Applied:
    """The core takes the change and the plane follows; if the plane refuses, both
    are as they were."""
    iface, plane = tunnel.iface, tunnel.plane
    before = reconfig.Before(iface, change)
    applied = reconfig.apply(iface, change, clock.now())
    try:
        plane.reconfigured(applied)
    except Exception as e:
        before.restore(iface)
        plane.reverted()
        if not isinstance(e, OSError):
            log.exception(
                "%s: the %s plane failed to follow a set request", tunnel.name, plane.name
            )
        raise Refused(
            getattr(e, "errno", None) or errno.EIO, f"the {plane.name} data plane refused it: {e}"
        ) from None
    return applied


def _remove_routes(tunnel: Tunnel, before: set[Network], after: set[Network]) -> None:
    """After the change: the routes of the networks no longer allowed go. A route
    already gone is fine; one the kernel keeps is only logged, the change stands."""
    try:
        netlink.update_routes(
            tunnel.name, (), before - after, numbered(tunnel.table), before | after
        )
    except netlink.LinkError as e:
        log.warning("%s: %s", tunnel.name, e)


def _undo(name: str, undo: contextlib.ExitStack) -> None:
    try:
        undo.close()
    except (OSError, netlink.LinkError) as e:
        log.error("%s: a refused set request could not be undone whole: %s", name, e)
