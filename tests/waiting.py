"""Waiting for an event instead of for a fixed time: the tests' one polling loop."""

from collections.abc import Callable
from typing import TypeVar

from tunnel.lab.testbed import poll_until

T = TypeVar("T")


def wait_until(ready: Callable[[], T], what: str, timeout: float = 15.0, poll: float = 0.05) -> T:
    """`ready()`'s first true answer; fails naming `what` if none comes within `timeout` s."""
    answer = poll_until(ready, timeout, poll)
    assert answer, f"no {what} within {timeout:g} s"
    return answer
