"""The anti-replay sliding window of RFC 6479 as WireGuard uses it
(drivers/net/wireguard/receive.c counter_validate): a counter is accepted once,
in any order, while it is within COUNTER_WINDOW_SIZE of the highest seen."""

from .constants import (
    COUNTER_BITS_TOTAL,
    COUNTER_REDUNDANT_BITS,
    COUNTER_WINDOW_SIZE,
    REJECT_AFTER_MESSAGES,
)

WORD_BITS = COUNTER_REDUNDANT_BITS  # the ring's unit, a word of counter.c's backtrack
WORDS = COUNTER_BITS_TOTAL // WORD_BITS


class ReplayWindow:
    def __init__(self) -> None:
        self.size = COUNTER_WINDOW_SIZE
        self.greatest = -1
        # A ring of WORDS words of WORD_BITS bits, as the kernel keeps it: bit
        # (counter % WORD_BITS) of word (counter // WORD_BITS % WORDS) is set once
        # the counter was seen. A word is cleared as the window moves into it;
        # the spare word's worth of bits (total minus window) makes that exact.
        # Small ints, so a message in order costs a few operations, where one
        # window-wide integer cost a kilobyte-wide shift per message.
        self.words = [0] * WORDS

    def check(self, counter: int) -> bool:
        """Whether the counter would be accepted; call only before authentication."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        if counter > self.greatest:
            return True
        if self.greatest - counter >= self.size:
            return False
        return not self.words[counter // WORD_BITS % WORDS] >> (counter % WORD_BITS) & 1

    def accept(self, counter: int) -> bool:
        """Record an authenticated counter; False if it is a replay or too old."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        greatest = self.greatest
        words = self.words
        index = counter // WORD_BITS
        if counter > greatest:
            current = greatest // WORD_BITS
            # A jump past the window clears it whole, at the cost of one pass.
            for i in range(current + 1, current + 1 + min(index - current, WORDS)):
                words[i % WORDS] = 0
            self.greatest = counter
        elif greatest - counter >= self.size:
            return False
        index %= WORDS
        bit = 1 << (counter % WORD_BITS)
        if words[index] & bit:
            return False
        words[index] |= bit
        return True
