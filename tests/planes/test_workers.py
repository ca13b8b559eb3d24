"""How many crypto workers a config's `workers` (or PYVPN_WORKERS) asks for."""

import pytest

from tunnel.planes.workers import crypto_workers, workers_setting
from tunnel.protocol.constants import MAX_CRYPTO_WORKERS


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 0), (3, 2), (8, 7), (200, 64)])
def test_auto_is_one_crypto_worker_per_core_beyond_the_first_and_none_on_two(cores, workers):
    assert crypto_workers("auto", cores) == workers


def test_a_number_is_taken_as_given_on_any_machine():
    assert [crypto_workers(n, 2) for n in (0, 1, 4)] == [0, 1, 4]


@pytest.mark.parametrize(
    ("value", "setting"), [("auto", "auto"), ("0", 0), ("3", 3), (3, 3), (64, MAX_CRYPTO_WORKERS)]
)
def test_a_setting_is_auto_or_a_whole_number(value, setting):
    assert workers_setting(value) == setting


@pytest.mark.parametrize("bad", ["many", "-1", "1.5", "", True, 2.0, MAX_CRYPTO_WORKERS + 1])
def test_anything_else_says_what_a_setting_may_be(bad):
    with pytest.raises(ValueError, match='must be "auto" or a whole number from 0 to 64'):
        workers_setting(bad)
