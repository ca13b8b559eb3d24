"""Endpoints given by host name follow the name. While a peer's handshakes fail,
its name is resolved again, and a new address replaces the old, as wireguard-tools'
contrib/reresolve-dns/reresolve-dns.sh does from a timer: for a peer whose latest
handshake is more than 135 s old, it sets the endpoint from the config again.
Unlike the script, an idle peer is left alone, so an endpoint learned by roaming
(a NAT's port, which the name does not know) stays until handshakes fail."""

import asyncio
import contextlib
import logging
import threading

from tunnel.core import reconfig
from tunnel.host import clock
from tunnel.host.udp import resolve
from tunnel.protocol.address import Address, format_address
from tunnel.protocol.constants import TIMER_SCALE
from tunnel.protocol.peer import Peer

from .running import Tunnel

log = logging.getLogger("pyvpn")

INTERVAL = 30.0 * TIMER_SCALE  # how often names are looked at; reresolve-dns runs every 30 s
# reresolve-dns.sh's threshold: a healthy session rekeys every REKEY_AFTER_TIME (120 s),
# and a rekey gets three REKEY_TIMEOUTs (5 s) to go through.
STALE_AFTER = 135.0 * TIMER_SCALE


def due(peer: Peer, now: float, wall_offset: float) -> bool:
    """Whether the peer's endpoint name is to be resolved again (`now` monotonic): it
    has no address yet, or it is being tried and failing, an initiation having gone
    out since a handshake more than STALE_AFTER old (or none ever). An idle peer is
    not due, however old its handshake: its endpoint may be a NAT's, learned by
    roaming, which the name does not know."""
    if peer.endpoint_name is None:
        return False
    if peer.endpoint is None:
        return True
    wall = peer.last_handshake_wall
    handshake = float("-inf") if wall is None else wall - wall_offset
    return peer.last_initiation_sent > handshake and now - handshake > STALE_AFTER


async def follow_names(tunnel: Tunnel) -> None:
    """Run until cancelled, one change at a time with set requests (tunnel.setting)."""
    loop, iface = asyncio.get_running_loop(), tunnel.iface
    while True:
        await asyncio.sleep(INTERVAL)
        now = clock.now()
        for peer in [p for p in iface.peers.values() if due(p, now, iface.wall_offset)]:
            try:
                await _follow(tunnel, peer, loop)
            except Exception:  # one peer's failure must not end the others' following
                log.exception("%s: following the endpoint name of a peer failed", tunnel.name)


async def _follow(tunnel: Tunnel, peer: Peer, loop: asyncio.AbstractEventLoop) -> None:
    name, iface, plane = tunnel.name, tunnel.iface, tunnel.plane
    named = peer.endpoint_name
    assert named is not None
    try:
        address = await _resolve(loop, named)
    except (OSError, UnicodeError) as e:
        log.debug("%s: cannot resolve %s: %s", name, named[0], e)
        return
    async with tunnel.setting:
        now = clock.now()
        # The lookup may have taken long: a set request may have changed or removed
        # the peer, or a handshake or roaming made its endpoint work, meanwhile.
        if iface.peers.get(peer.public_key) is not peer or peer.endpoint_name != named:
            return
        if address == peer.endpoint or not due(peer, now, iface.wall_offset):
            return
        old = peer.endpoint
        change = reconfig.PeerChange(
            peer.public_key, update_only=True, endpoint=address, endpoint_name=named
        )
        plane.reconfigured(reconfig.apply(iface, reconfig.Change(peers=[change]), now))
        # A persistent keepalive reaches out to the new address at once, as at start:
        # its retries toward the old one may have given up.
        plane.apply(iface.announce(peer, now))
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

    def settle(result: Address | None, error: Exception | None) -> None:
        if future.done():  # cancelled: shutting down
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = resolve(*named), None
        except Exception as e:  # whatever it is, the waiting task must hear of it
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="pyvpn-resolve", daemon=True).start()
    return future
