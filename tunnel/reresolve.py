"""Endpoints given by host name follow the name. While a peer's handshakes fail,
its name is resolved again, and a new address replaces the old, as wireguard-tools'
contrib/reresolve-dns/reresolve-dns.sh does from a timer: for a peer whose latest
handshake is more than 135 s old, it sets the endpoint from the config again.
An endpoint that works, also one learned by roaming, is left alone."""

import asyncio
import contextlib
import logging
import threading
import time

from . import reconfig
from .constants import TIMER_SCALE
from .cookie import Address
from .interface import Interface
from .peer import Peer
from .plane import Plane
from .udp import format_address, resolve

log = logging.getLogger("pyvpn")

INTERVAL = 30.0 * TIMER_SCALE  # how often names are looked at; reresolve-dns runs every 30 s
# reresolve-dns.sh's threshold: a healthy session rekeys every REKEY_AFTER_TIME (120 s),
# and a rekey gets three REKEY_TIMEOUTs (5 s) to go through.
STALE_AFTER = 135.0 * TIMER_SCALE


def due(peer: Peer, wall_now: float) -> bool:
    """Whether the peer's endpoint name is to be resolved again: no handshake, or none
    for STALE_AFTER."""
    if peer.endpoint_name is None:
        return False
    return peer.last_handshake_wall is None or wall_now - peer.last_handshake_wall > STALE_AFTER


async def follow_names(name: str, iface: Interface, plane: Plane, setting: asyncio.Lock) -> None:
    """Run until cancelled. `setting` serialises this with set requests (daemon.Tunnel)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(INTERVAL)
        wall_now = time.monotonic() + iface.wall_offset
        for peer in [p for p in iface.peers.values() if due(p, wall_now)]:
            named = peer.endpoint_name
            assert named is not None
            try:
                address = await _resolve(loop, named)
            except (OSError, UnicodeError) as e:
                log.debug("%s: cannot resolve %s: %s", name, named[0], e)
                continue
            async with setting:
                # A set request may have changed or removed the peer meanwhile.
                if iface.peers.get(peer.public_key) is not peer or peer.endpoint_name != named:
                    continue
                if address == peer.endpoint:
                    continue
                old = peer.endpoint
                change = reconfig.PeerChange(
                    peer.public_key, update_only=True, endpoint=address, endpoint_name=named
                )
                plane.reconfigured(
                    reconfig.apply(iface, reconfig.Change(peers=[change]), time.monotonic())
                )
            log.info(
                "%s: %s now resolves to %s (was %s): the peer's new endpoint",
                name,
                format_address(named),
                format_address(address),
                format_address(old) if old else "none",
            )


def _resolve(loop: asyncio.AbstractEventLoop, named: Address) -> asyncio.Future[Address]:
    """getaddrinfo blocks, for as long as a dead DNS server takes: in a daemon thread
    of its own, which shutdown does not wait for (the default executor's would be)."""
    future: asyncio.Future[Address] = loop.create_future()

    def settle(result: Address | None, error: BaseException | None) -> None:
        if future.done():  # cancelled: shutting down
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = resolve(*named), None
        except (OSError, UnicodeError) as e:
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="pyvpn-resolve", daemon=True).start()
    return future
