"""The UAPI server (wireguard-go's ipc/ and the dispatch of device/uapi.go): the
listener on /var/run/wireguard/NAME.sock, the framing of operations (an
operation line, its argument lines, an empty line), and the dispatch of each
operation to its reply. The replies' text is uapi.py's; a set request is
set_request.py's transaction."""

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator

from tunnel.host import udp

from . import show, uapi
from .running import Tunnel
from .set_request import set_request
from .status import snapshot
from .uapi_socket import SOCKET_DIR, socket_path

log = logging.getLogger("pyvpn")


@contextlib.asynccontextmanager
async def serving(tunnel: Tunnel) -> AsyncIterator[None]:
    """The tunnel's UAPI socket answers while inside; on leaving, it is closed and
    its file removed."""
    SOCKET_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    old_umask = os.umask(0o077)  # the socket hands out the private key: root only
    try:
        server = await asyncio.start_unix_server(
            lambda reader, writer: _connection(tunnel, reader, writer),
            path=str(socket_path(tunnel.name)),
        )
    finally:
        os.umask(old_umask)
    try:
        yield
    finally:
        server.close()
        # PermissionError: we dropped root; the janitor of privileges.py removes it.
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.unlink(socket_path(tunnel.name))


async def _connection(
    tunnel: Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One client's operations, each answered in turn, until it hangs up."""
    try:
        while True:
            line = await read_line(reader)
            if line == "":
                break
            # An operation's arguments end at an empty line; get has none.
            args, too_long = [], line is None
            while (arg := await read_line(reader)) != "":
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
            else:
                reply = await _operation(tunnel, line, args)
            writer.write(reply.encode())
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _operation(tunnel: Tunnel, line: str, args: list[str]) -> str:
    """The reply to one operation."""
    if line == "get=1":
        return uapi.get_response(tunnel.iface, tunnel.listen_port, udp.mark(tunnel.plane.sock))
    if line == "get=pyvpn":
        return uapi.status_response(snapshot(tunnel))
    if line == "get=pyvpn_text":
        return uapi.text_response(show.render(snapshot(tunnel)))
    if line == "set=1":
        async with tunnel.setting:
            return await set_request(tunnel, args)
    return uapi.error_response(errno.EPROTO)


async def read_line(reader: asyncio.StreamReader) -> str | None:
    """The next line, stripped ("" at the end of the stream), or None for one longer
    than the reader's limit (64 KiB), skipped to its end: the operation it is in
    gets an errno reply, and the connection stays in step for the next one."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:  # the last line, without its newline
        line = e.partial
    except asyncio.LimitOverrunError as e:
        while True:
            await reader.readexactly(e.consumed)  # the line so far, its newline not yet
            try:
                await reader.readuntil(b"\n")
                return None
            except asyncio.LimitOverrunError as more:
                e = more
    return line.decode(errors="replace").strip()
