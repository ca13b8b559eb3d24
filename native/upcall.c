/* SPDX-License-Identifier: MIT
 *
 * upcall.c -- messages to Python over the SOCK_SEQPACKET control socket, and
 * how many of them a flood may cause.
 *
 * One message per event: struct dp_upcall_hdr then the payload.  Sent with
 * MSG_DONTWAIT: a worker must never block on Python; if Python falls behind
 * the upcall is dropped and counted (handshake packets are retransmitted by
 * the protocol's timers anyway, and Python reads the state changes that the
 * other kinds announce from dp_peer_stats() too).
 */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/random.h>
#include <sys/uio.h>

#include "internal.h"

/* Python counts as behind for UNDER_LOAD_HOLD_NS after the control socket last
 * overflowed, as the kernel stays under load for a second after its handshake
 * queue was last long (receive.c, wg_receive_handshake_packet). */

bool upcall_send(dp_t *dp, int kind, uint32_t peer_id, const struct sockaddr *sa,
		 const uint8_t *payload, size_t len)
{
	struct dp_upcall_hdr h;
	memset(&h, 0, sizeof(h));
	h.kind = (uint8_t)kind;
	h.peer_id = peer_id;
	if (sa && sa->sa_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
		h.family = AF_INET;
		h.port = s->sin_port; /* already big-endian */
		memcpy(h.addr, &s->sin_addr, 4);
	} else if (sa && sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
		h.family = AF_INET6;
		h.port = s->sin6_port;
		memcpy(h.addr, &s->sin6_addr, 16);
	}
	struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)payload, len}};
	struct msghdr m = {.msg_iov = iov, .msg_iovlen = len ? 2 : 1};
	if (sendmsg(dp->ctrl_fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		if (errno == EAGAIN || errno == ENOBUFS) /* full: Python is behind */
			upcall_overflowed(dp);
		else
			STAT_ADD(dp->st.upcalls_dropped, 1);
		return false;
	}
	STAT_ADD(dp->st.upcalls_sent, 1);
	return true;
}

void upcall_overflowed(dp_t *dp)
{
	STAT_ADD(dp->st.upcalls_dropped, 1);
	atomic_store_explicit(&dp->upcall_load_until_ns, now_ns() + UNDER_LOAD_HOLD_NS,
			      memory_order_relaxed);
}

/* A token bucket as GCRA: one timestamp, the time the next event is due, so
 * workers share a bucket without a lock. */
static bool gcra_allow(_Atomic uint64_t *due_ns, uint64_t now, uint64_t per_second,
		       uint64_t burst)
{
	const uint64_t interval = 1000000000ULL / per_second;
	const uint64_t tolerance = interval * (burst - 1);
	uint64_t due = atomic_load_explicit(due_ns, memory_order_relaxed);
	for (;;) {
		uint64_t from = due > now ? due : now;
		if (from - now > tolerance)
			return false;
		if (atomic_compare_exchange_weak_explicit(due_ns, &due, from + interval,
							  memory_order_relaxed,
							  memory_order_relaxed))
			return true;
	}
}

/* Unrouted packets go up for their ICMP answer no faster than Python answers them
 * (ICMP_ERRORS_PER_SECOND and ICMP_ERRORS_BURST): a flood of them must not fill
 * the control socket that handshakes share. */

void upcall_unrouted(dp_t *dp, const uint8_t *pkt, size_t len, uint64_t now)
{
	if (gcra_allow(&dp->unrouted_due_ns, now, ICMP_ERRORS_PER_SECOND,
		       ICMP_ERRORS_BURST))
		upcall_send(dp, DP_UPCALL_UNROUTED, 0, NULL, pkt, len);
}

/* While Python keeps up, every datagram that is not ours goes up: Python alone
 * judges handshakes, cookies and what is garbage.  Once it falls behind, a
 * source flooding at line rate would take all of the control socket and starve
 * the peers handshaking beside it, so then each source gets the kernel's
 * handshake rate (ratelimiter.c: RATELIMIT_PACKETS_PER_SECOND, bursts of
 * RATELIMIT_BURST), an IPv4 address or an IPv6 /64 as there.
 *
 * Unlike the kernel's, this share is taken before any MAC is checked, so from
 * the address a datagram claims: a spoofer can use up another's share.  Hence
 * only a real overflow starts or prolongs it, never a refusal: a spoofer must
 * outrun Python as any flood must, and then costs the spoofed peer no more than
 * the flood would.  Sources share 2^DP_SOURCE_BUCKET_BITS buckets under a keyed
 * hash, one key per family: which sources share a peer's bucket is chance, not
 * known outside. */

static uint64_t random_odd(void)
{
	uint64_t key = 0;
	if (getrandom(&key, sizeof(key), 0) != sizeof(key))
		key = now_ns() * 0x9e3779b97f4a7c15ULL;
	return key | 1; /* odd: multiply-shift hashing */
}

void upcall_sources_init(dp_t *dp)
{
	dp->source_key4 = random_odd();
	dp->source_key6 = random_odd();
}

static uint64_t source_bucket(const dp_t *dp, const struct sockaddr_storage *src)
{
	uint64_t k = 0, key = dp->source_key4;
	if (src->ss_family == AF_INET) {
		memcpy(&k, &((const struct sockaddr_in *)src)->sin_addr, 4);
	} else {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)src)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(a)) { /* IPv4 on the dual-stack socket */
			memcpy(&k, &a->s6_addr[12], 4);
		} else {
			memcpy(&k, a, 8);
			key = dp->source_key6;
		}
	}
	return (k * key) >> (64 - DP_SOURCE_BUCKET_BITS);
}

bool upcall_source_allowed(dp_t *dp, const struct sockaddr_storage *src, uint64_t now)
{
	if (now < atomic_load_explicit(&dp->upcall_load_until_ns, memory_order_relaxed) &&
	    !gcra_allow(&dp->source_due_ns[source_bucket(dp, src)], now,
			RATELIMIT_PACKETS_PER_SECOND, RATELIMIT_BURST)) {
		STAT_ADD(dp->st.rx_ratelimited, 1);
		return false;
	}
	return true;
}

void upcall_datagram(dp_t *dp, const struct sockaddr_storage *src, const uint8_t *d, size_t n,
		     uint64_t now)
{
	if (upcall_source_allowed(dp, src, now))
		upcall_send(dp, DP_UPCALL_DATAGRAM, 0, (const struct sockaddr *)src, d, n);
}
