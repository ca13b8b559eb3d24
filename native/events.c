/* SPDX-License-Identifier: MIT
 *
 * events.c -- what Python's timers need to hear of the data path (the kernel's
 * timers.c hooks: data sent, data received, a keepalive either way), per peer:
 * C adds each transport message to the peer's events, and rings Python
 * (DP_UPCALL_EVENTS) when there were none outstanding and it did not ring in
 * the last TIMER_TICK; Python takes them all at once (dp_peer_take_events).  So
 * the first message after a quiet spell is heard at once, and a busy peer's
 * messages come to at most one upcall a tick, however many batches they took.
 *
 * A ring lost to a full control socket loses nothing: the events wait, and
 * Python takes them at its next tick anyway (the peers whose stats moved).
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

static void events_ring(dp_t *dp, struct peer *p, uint64_t now)
{
	if (STAT_GET(p->ev_pending) || age_ns(now, STAT_GET(p->ev_rung_ns)) < (int64_t)TIMER_TICK_NS)
		return;
	if (atomic_exchange(&p->ev_pending, true))
		return; /* another worker rang */
	STAT_SET(p->ev_rung_ns, now);
	if (!upcall_send(dp, DP_UPCALL_EVENTS, p->id, NULL, NULL, 0))
		STAT_SET(p->ev_pending, false);
}

/* The time after the count: dp_peer_take_events() takes the time first, so
 * it never reports a time without the messages that set it. */
void events_add(dp_t *dp, struct peer *p, struct transport_events *ev, size_t mlen, bool data,
		uint64_t now)
{
	STAT_ADD(ev->bytes, mlen);
	if (data)
		STAT_ADD(ev->data_messages, 1);
	STAT_SET(ev->last_ns, now);
	events_ring(dp, p, now);
}

#define TAKE(field) atomic_exchange_explicit(&(field), 0, memory_order_relaxed)

int dp_peer_take_events(dp_t *dp, uint32_t peer_id, struct dp_peer_events *out)
{
	memset(out, 0, sizeof(*out));
	pthread_rwlock_rdlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	if (p) {
		/* Cleared first: a message from now on rings again. */
		STAT_SET(p->ev_pending, false);
		out->last_tx_ns = TAKE(p->ev_tx.last_ns);
		out->last_rx_ns = TAKE(p->ev_rx.last_ns);
		out->tx_bytes = TAKE(p->ev_tx.bytes);
		out->tx_data_messages = TAKE(p->ev_tx.data_messages);
		out->rx_bytes = TAKE(p->ev_rx.bytes);
		out->rx_data_messages = TAKE(p->ev_rx.data_messages);
		socklen_t l;
		peer_copy_endpoint(p, &out->endpoint, &l);
		out->endpoint_len = l;
	}
	pthread_rwlock_unlock(&dp->lock);
	return p ? 0 : -ENOENT;
}
