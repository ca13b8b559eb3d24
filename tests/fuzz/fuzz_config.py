"""atheris: the config file (tunnel/control/config.py): any text gives a Config
or a ConfigError, never another exception. Endpoint names are not looked up:
only address literals resolve here, so that no input reaches the network."""

import contextlib
import sys
import tomllib

import atheris

with atheris.instrument_imports():
    from tunnel.control import config


def literal_only(host: str, port: int) -> tuple[str, int]:
    import ipaddress
    import socket

    try:
        return (str(ipaddress.ip_address(host)), port)
    except ValueError:
        raise socket.gaierror(socket.EAI_NONAME, "not looked up while fuzzing") from None


config.resolve = literal_only


def one_input(data: bytes) -> None:
    try:
        parsed = tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        return
    with contextlib.suppress(config.ConfigError):
        config.parse(parsed, "fuzz.toml")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
