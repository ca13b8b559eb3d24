"""Socket addresses to and from the core's (host, port) pairs (tunnel/host/udp.py)."""

import socket

from tunnel.host.udp import from_sockaddr, to_sockaddr


def test_from_sockaddr_unmaps_ipv4_and_drops_the_scope() -> None:
    assert from_sockaddr(("::ffff:198.18.0.2", 51820, 0, 0)) == ("198.18.0.2", 51820)
    assert from_sockaddr(("fe80::1%eth0", 51820, 0, 2)) == ("fe80::1", 51820)
    assert from_sockaddr(("198.18.0.2", 51820)) == ("198.18.0.2", 51820)
    assert from_sockaddr(("FD18:0::2", 7, 0, 0)) == ("fd18::2", 7)  # canonical text


def test_to_sockaddr_maps_ipv4_only_on_a_dual_stack_socket() -> None:
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as six,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as four,
    ):
        # The same address twice over: what one socket family got must not be
        # handed to the other (the conversion is memoized).
        assert to_sockaddr(six, ("198.18.0.2", 51820)) == ("::ffff:198.18.0.2", 51820)
        assert to_sockaddr(four, ("198.18.0.2", 51820)) == ("198.18.0.2", 51820)
        assert to_sockaddr(six, ("fd18::2", 51820)) == ("fd18::2", 51820)
