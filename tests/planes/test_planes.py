"""What both data planes share (tunnel/planes/base.py), on a real event loop."""

import asyncio
import logging
import os
import socket

from tunnel.core.interface import Interface
from tunnel.planes.base import Plane
from tunnel.protocol import keys


class Quiet(Plane):
    """A plane that reads nothing: only the tick runs."""

    name = "quiet"

    def readers(self) -> dict:
        return {}


def test_a_failing_tick_does_not_stop_the_timers(caplog) -> None:
    iface = Interface(keys.generate_private_key())
    ticks: list[float] = []

    def tick(now: float) -> list:
        ticks.append(now)
        if len(ticks) == 1:
            raise RuntimeError("a bug in one timer handler")
        return []

    iface.tick = tick  # type: ignore[method-assign]
    read, write = os.pipe()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loop = asyncio.new_event_loop()
    plane = Quiet(iface, write, sock)
    try:
        with caplog.at_level(logging.ERROR, logger="pyvpn"):
            plane.start(loop)  # the first tick runs at once, and fails
            loop.run_until_complete(asyncio.sleep(0.45))
    finally:
        plane.stop()
        loop.close()
        sock.close()
        os.close(read)
        os.close(write)
    assert len(ticks) >= 4  # every 100 ms, on after the failure
    assert "a timer tick failed" in caplog.text
