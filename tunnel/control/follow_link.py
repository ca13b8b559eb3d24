"""A device set up by others (pyvpn-wg's, under wg-quick) is followed rather than
owned: its deletion stops the tunnel, and a new MTU reaches the plane (padding,
`pyvpn show`)."""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

from tunnel.host.link_watch import LinkWatch

from .running import Tunnel

log = logging.getLogger("pyvpn")


@contextlib.contextmanager
def following(tunnel: Tunnel, stop: Callable[[], None]) -> Iterator[None]:
    """Follow the device while inside, in the running event loop; `stop` runs once
    it is deleted. OSError if the kernel's link messages cannot be had."""
    loop = asyncio.get_running_loop()
    watch = LinkWatch(tunnel.name)

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
            stop()

    loop.add_reader(watch.fileno(), readable)
    try:
        yield
    finally:
        loop.remove_reader(watch.fileno())
        watch.close()
