"""atheris: wg-quick's INI files (tunnel/control/wg_quick.py, then config.py's
checks): any text gives a Config or a ConfigError naming file, line and key, never
another exception. As in fuzz_config.py, only address literals resolve."""

import contextlib
import sys

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
    # The [Interface] line makes any text a wg-quick file rather than TOML.
    text = "[Interface]\n" + data.decode("utf-8", "replace")
    with contextlib.suppress(config.ConfigError):
        config.load_source(config.source(text, "wg0.conf"))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
