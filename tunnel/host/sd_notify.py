"""systemd's readiness protocol (sd_notify(3)): under a `Type=notify` unit
(configs/pyvpn@.service), systemd starts what needs the tunnel only once it is
up. One datagram to $NOTIFY_SOCKET per state; nothing when it is unset. Written
here rather than taken from a library: the protocol is those few lines."""

import logging
import os
import socket

log = logging.getLogger("pyvpn")


def notify(state: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):  # an abstract socket
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), path)
        except OSError as e:
            log.warning("cannot tell systemd %s: %s", state.split("\n")[0], e.strerror)
