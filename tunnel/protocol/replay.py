"""The anti-replay sliding window of RFC 6479 as WireGuard uses it
(drivers/net/wireguard/receive.c counter_validate): a counter is accepted once,
in any order, while it is within COUNTER_WINDOW_SIZE of the highest seen."""

from .constants import COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES


class ReplayWindow:
    def __init__(self, size: int = COUNTER_WINDOW_SIZE) -> None:
        self.size = size
        self.greatest = -1
        # Bit i set means counter (greatest - i) was seen; a Python int is an
        # arbitrarily wide bitmap, shifted as the window slides.
        self.bitmap = 0

    def check(self, counter: int) -> bool:
        """Whether the counter would be accepted; call only before authentication."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        if counter > self.greatest:
            return True
        offset = self.greatest - counter
        return offset < self.size and not (self.bitmap >> offset) & 1

    def accept(self, counter: int) -> bool:
        """Record an authenticated counter; False if it is a replay or too old."""
        if not self.check(counter):
            return False
        if counter > self.greatest:
            shift = counter - self.greatest
            # A jump past the window forgets it whole: shifting first would build
            # an integer as wide as the jump (2^63 bits for a hostile counter).
            if shift >= self.size:
                self.bitmap = 1
            else:
                self.bitmap = ((self.bitmap << shift) | 1) & ((1 << self.size) - 1)
            self.greatest = counter
        else:
            self.bitmap |= 1 << (self.greatest - counter)
        return True
