/* SPDX-License-Identifier: MIT
 *
 * replay.c -- the sliding replay window on receive counters.
 *
 * The algorithm is the kernel's counter_validate() from
 * drivers/net/wireguard/receive.c (itself RFC 6479's): a ring of
 * COUNTER_BITS_TOTAL bits kept as unsigned longs, of which one long is always
 * "redundant" so that moving the window forward clears whole words instead
 * of shifting bits.  That leaves COUNTER_WINDOW_SIZE = 8192 - 64 = 8128
 * counters behind the highest one that are still accepted once.
 *
 * It must only be called after the message's tag verified (whitepaper 5.4.6),
 * otherwise a forged counter could slide the window.
 */
#include <string.h>

#include "internal.h"

#define BITS_PER_LONG (8 * sizeof(unsigned long))
#define LOG2_BITS_PER_LONG 6
#define RING_WORDS (COUNTER_BITS_TOTAL / BITS_PER_LONG)

_Static_assert(sizeof(unsigned long) == 8, "the window assumes 64-bit longs");

void replay_init(struct dp_replay *r)
{
	memset(r, 0, sizeof(*r));
}

bool replay_validate(struct dp_replay *r, uint64_t their_counter)
{
	unsigned long index, index_current, top, i;

	if (r->counter >= REJECT_AFTER_MESSAGES + 1 || their_counter >= REJECT_AFTER_MESSAGES)
		return false;
	++their_counter; /* stored counters are +1 so that 0 means "nothing yet" */
	if (COUNTER_WINDOW_SIZE + their_counter < r->counter)
		return false; /* too old */
	index = their_counter >> LOG2_BITS_PER_LONG;
	if (their_counter > r->counter) {
		/* Window moves forward: clear the words between. */
		index_current = r->counter >> LOG2_BITS_PER_LONG;
		top = index - index_current;
		if (top > RING_WORDS)
			top = RING_WORDS;
		for (i = 1; i <= top; ++i)
			r->backtrack[(i + index_current) & (RING_WORDS - 1)] = 0;
		r->counter = their_counter;
	}
	index &= RING_WORDS - 1;
	unsigned long bit = 1UL << (their_counter & (BITS_PER_LONG - 1));
	bool seen = r->backtrack[index] & bit;
	r->backtrack[index] |= bit;
	return !seen;
}
