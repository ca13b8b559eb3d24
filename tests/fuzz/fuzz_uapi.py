"""atheris: UAPI set requests (tunnel/control/uapi.py parse_set and check): any
request parses to a Change or is refused with Refused, never another exception."""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel.control.uapi import check, parse_set
    from tunnel.core.interface import Interface
    from tunnel.core.reconfig import Refused
    from tunnel.protocol import keys

IFACES = [Interface(keys.generate_private_key(), l2=l2) for l2 in (False, True)]


def one_input(data: bytes) -> None:
    lines = data.decode("utf-8", "replace").split("\n")
    try:
        change = parse_set(lines)
        for iface in IFACES:
            check(iface, change)
    except Refused:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
