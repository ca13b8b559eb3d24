"""atheris: WireGuard messages (tunnel/protocol/messages.py) and the core that
takes them (receive_datagram): parsing raises only MessageError, what parses
packs back to the same bytes, and no datagram raises out of the core."""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel.core.interface import Interface
    from tunnel.protocol import keys
    from tunnel.protocol.messages import MessageError, parse
    from tunnel.protocol.peer_config import PeerConfig

IFACES = [Interface(keys.generate_private_key(), l2=l2) for l2 in (False, True)]
for iface in IFACES:
    iface.add_peer(PeerConfig(keys.public_key(keys.generate_private_key())))


def one_input(data: bytes) -> None:
    try:
        message = parse(data)
    except MessageError:
        pass
    else:
        assert message.pack() == data
    for iface in IFACES:
        iface.receive_datagram(data, ("198.18.0.9", 51820), 1000.0)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
