"""Every per-peer timer in one place, with the semantics of the whitepaper section
6 and drivers/net/wireguard/timers.c. Timers are deadlines on the caller's monotonic
clock; events arm and disarm them and `expired` reports those that fired."""

from dataclasses import dataclass
from enum import Enum

from .constants import KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT


class Timer(Enum):
    RETRANSMIT_HANDSHAKE = "retransmit_handshake"
    SEND_KEEPALIVE = "send_keepalive"
    NEW_HANDSHAKE = "new_handshake"
    ZERO_KEY_MATERIAL = "zero_key_material"
    PERSISTENT_KEEPALIVE = "persistent_keepalive"


@dataclass
class Timers:
    persistent_keepalive_interval: float = 0.0

    def __post_init__(self) -> None:
        self.deadlines: dict[Timer, float] = {}
        # No deadline is before this (a disarmed timer may leave it early): a tick
        # over a hub's thousands of peers skips those with nothing due in one compare.
        self.earliest = float("inf")
        self.need_another_keepalive = False
        # The next keepalive sent is SEND_KEEPALIVE's, and another is due after it.
        self.keepalive_follows = False
        self.handshake_attempts = 0

    def _arm(self, timer: Timer, at: float) -> None:
        self.deadlines[timer] = at
        self.earliest = min(self.earliest, at)

    def _arm_if_idle(self, timer: Timer, at: float) -> None:
        self.earliest = min(self.earliest, self.deadlines.setdefault(timer, at))

    def _disarm(self, timer: Timer) -> None:
        self.deadlines.pop(timer, None)

    def pending(self, timer: Timer) -> bool:
        return timer in self.deadlines

    # Events, named after the timers_* hooks in timers.c.

    def data_sent(self, now: float) -> None:
        # No reply to data for a while means the session may be dead: handshake again.
        self._arm_if_idle(Timer.NEW_HANDSHAKE, now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT)

    def data_received(self, now: float) -> None:
        if self.pending(Timer.SEND_KEEPALIVE):
            self.need_another_keepalive = True
        else:
            self._arm(Timer.SEND_KEEPALIVE, now + KEEPALIVE_TIMEOUT)

    def keepalive_due(self) -> None:
        """SEND_KEEPALIVE fired: if more data arrived while it was pending, another
        keepalive follows the one it sends (timers.c wg_expired_send_keepalive)."""
        self.keepalive_follows, self.need_another_keepalive = self.need_another_keepalive, False

    def any_authenticated_sent(self, now: float, is_data: bool) -> None:
        if self.keepalive_follows and not is_data:
            # Armed once the keepalive went, not when its timer fired: an external
            # transport reports the send a tick later, and the report must not
            # disarm what comes after it. Data sent instead needs no keepalive.
            self._arm(Timer.SEND_KEEPALIVE, now + KEEPALIVE_TIMEOUT)
        else:
            self._disarm(Timer.SEND_KEEPALIVE)
        self.keepalive_follows = False

    def any_authenticated_received(self) -> None:
        self._disarm(Timer.NEW_HANDSHAKE)

    def handshake_initiated(self, now: float, jitter: float) -> None:
        self._arm(Timer.RETRANSMIT_HANDSHAKE, now + REKEY_TIMEOUT + jitter)

    def handshake_complete(self) -> None:
        self._disarm(Timer.RETRANSMIT_HANDSHAKE)
        self.handshake_attempts = 0

    def gave_up(self) -> None:
        """No handshake after MAX_TIMER_HANDSHAKES retries (timers.c
        wg_expired_retransmit_handshake): no keepalive either."""
        self._disarm(Timer.SEND_KEEPALIVE)

    def session_derived(self, now: float) -> None:
        self._arm(Timer.ZERO_KEY_MATERIAL, now + REJECT_AFTER_TIME * 3)

    def any_authenticated_traversal(self, now: float) -> None:
        if self.persistent_keepalive_interval:
            self._arm(Timer.PERSISTENT_KEEPALIVE, now + self.persistent_keepalive_interval)

    def set_persistent_keepalive(self, interval: float) -> None:
        self.persistent_keepalive_interval = interval
        if not interval:
            self._disarm(Timer.PERSISTENT_KEEPALIVE)

    def stop_all(self) -> None:
        self.deadlines.clear()

    def expired(self, now: float) -> list[Timer]:
        if now < self.earliest:
            return []
        fired = [t for t, at in self.deadlines.items() if at <= now]
        for timer in fired:
            del self.deadlines[timer]
        self.earliest = min(self.deadlines.values(), default=float("inf"))
        return fired
