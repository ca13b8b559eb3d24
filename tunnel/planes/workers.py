"""How many crypto workers the native plane runs beside its I/O worker
(native/pipeline.c): the config's `workers` and pyvpn-wg's PYVPN_WORKERS."""

import os

from tunnel.protocol.constants import MAX_CRYPTO_WORKERS

AUTO = "auto"


def workers_setting(value: object) -> int | str:
    """`workers` as written: "auto", or a whole number from 0 to MAX_CRYPTO_WORKERS
    (a string of digits too, as an environment variable gives it). ValueError
    says what is wrong."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if value == AUTO or (
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_CRYPTO_WORKERS
    ):
        return value
    raise ValueError(
        f'must be "auto" or a whole number from 0 to {MAX_CRYPTO_WORKERS}, got {value!r:.40}'
    )


def crypto_workers(setting: int | str, cores: int | None = None) -> int:
    """The crypto workers `setting` asks for. "auto": one per core beyond the
    first (the I/O worker's), and none on two cores or fewer, where the I/O
    worker sealing and opening itself measured best (docs/benchmark.md)."""
    if setting != AUTO:
        return int(setting)
    cores = cores or os.cpu_count() or 1
    return min(cores - 1, MAX_CRYPTO_WORKERS) if cores > 2 else 0
