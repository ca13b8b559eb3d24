"""atheris: wg-quick's INI files (tunnel/control/wg_quick.py, then config.py's
checks): any text gives a Config or a ConfigError naming file, line and key, never
another exception."""

import contextlib
import sys

import atheris

# fuzz_config.py's instrumented config module (wg_quick.py with it), where only
# address literals resolve, so that no input reaches the network.
from fuzz_config import config


def one_input(data: bytes) -> None:
    # The [Interface] line makes any text a wg-quick file rather than TOML.
    text = "[Interface]\n" + data.decode("utf-8", "replace")
    with contextlib.suppress(config.ConfigError):
        config.load_source(config.source(text, "wg0.conf"))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
