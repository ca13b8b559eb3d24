/* SPDX-License-Identifier: MIT
 *
 * receive.c -- UDP -> device: recvmmsg a batch (each buffer possibly a UDP
 * GRO train of equal-size datagrams), hand everything that is not one of our
 * transport messages to Python, authenticate and decrypt the rest, check the
 * replay window and cryptokey routing, then write the plaintext to the
 * device, coalescing TCP segments into super-packets (offload.c).
 *
 * Order of checks follows the kernel's receive.c: decrypt (tag) first, then
 * counter_validate(), then roaming and keypair confirmation, then the inner
 * packet's source against the peer's allowed-ips.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "pipeline.h"

#define RX_GRO_PKTS 1024
#define RX_MAX_CONFIRMS 16
#define RX_RING_SLOTS (RX_MSGS_PER_BATCH * UDP_GSO_MAX_SEGS) /* a full ring: release it */

struct rx_state {
	dp_t *dp;
	struct aead aead;
	bool parallel; /* crypto workers open, through ring (pipeline.h) */
	struct crypto_ring ring;
	struct mac1 mac1;
	struct udp_recv_batch udp;
	struct gro_batch *gro;
	struct {
		uint32_t peer_id, local_index;
	} confirms[RX_MAX_CONFIRMS];
	int nconfirms;
	/* Per-batch memo of the last inner source checked against allowed-ips
	 * and the last MAC learned (a batch is mostly one flow).  Valid only
	 * while the batch holds dp->lock, so rx_worker clears it each time it
	 * takes the lock: configuration cannot change under it. */
	struct {
		bool valid;
		int family;
		uint8_t addr[16];
		struct peer *peer;
	} src_memo;
	struct {
		bool valid;
		uint8_t mac[6];
		uint32_t peer_id;
	} mac_memo;
};

struct rx_state *rx_state_new(dp_t *dp)
{
	struct rx_state *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->dp = dp;
	int crypto_err = aead_init(&r->aead, 0) | mac1_init(&r->mac1);
	r->gro = gro_new(RX_GRO_PKTS);
	r->parallel = dp->crypto != NULL;
	if (r->parallel)
		crypto_err |= crypto_ring_init(&r->ring, dp->crypto, RX_RING_SLOTS, &r->aead);
	if (crypto_err || !r->gro || udp_recv_batch_init(&r->udp)) {
		rx_state_free(r);
		return NULL;
	}
	return r;
}

void rx_state_free(struct rx_state *r)
{
	if (!r)
		return;
	udp_recv_batch_free(&r->udp);
	gro_free(r->gro);
	aead_free(&r->aead);
	mac1_free(&r->mac1);
	if (r->parallel)
		crypto_ring_free(&r->ring);
	free(r);
}

static inline uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static bool sockaddr_equal(const struct sockaddr_storage *a, socklen_t alen,
			   const struct sockaddr_storage *b)
{
	if (!alen || a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
	return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
	       !memcmp(&x->sin6_addr, &y->sin6_addr, 16);
}

/* Roaming (whitepaper 2.1): the endpoint follows the source of the latest
 * authenticated message. */
static void update_endpoint(dp_t *dp, struct peer *p, const struct sockaddr_storage *src)
{
	bool changed = false;
	pthread_mutex_lock(&p->endpoint_lock);
	if (!sockaddr_equal(&p->endpoint, p->endpoint_len, src)) {
		memcpy(&p->endpoint, src, sizeof(*src));
		p->endpoint_len = src->ss_family == AF_INET ? sizeof(struct sockaddr_in)
							    : sizeof(struct sockaddr_in6);
		changed = true;
	}
	pthread_mutex_unlock(&p->endpoint_lock);
	if (changed)
		upcall_send(dp, DP_UPCALL_ENDPOINT_CHANGED, p->id, (const struct sockaddr *)src, NULL, 0);
}

static void note_confirm(struct rx_state *r, struct keypair *kp)
{
	for (int i = 0; i < r->nconfirms; i++)
		if (r->confirms[i].local_index == kp->local_index)
			return;
	if (r->nconfirms < RX_MAX_CONFIRMS) {
		r->confirms[r->nconfirms].peer_id = kp->peer->id;
		r->confirms[r->nconfirms].local_index = kp->local_index;
		r->nconfirms++;
	}
}

/* The inner packet's length and source (tun).  0 if malformed. */
static size_t inner_ip(const uint8_t *ip, size_t len, int *family, const uint8_t **src)
{
	if (len >= 20 && ip[0] >> 4 == 4) {
		size_t l = (size_t)ip[2] << 8 | ip[3];
		size_t ihl = (size_t)(ip[0] & 0xf) * 4;
		if (ihl < 20 || l < ihl || l > len)
			return 0;
		*family = AF_INET;
		*src = ip + 12;
		return l;
	}
	if (len >= 40 && ip[0] >> 4 == 6) {
		size_t l = ((size_t)ip[4] << 8 | ip[5]) + 40;
		if (l > len)
			return 0;
		*family = AF_INET6;
		*src = ip + 8;
		return l;
	}
	return 0;
}

void dp_set_mac1_key(dp_t *dp, const uint8_t key[32])
{
	pthread_rwlock_wrlock(&dp->lock);
	memcpy(dp->mac1_key, key, sizeof(dp->mac1_key));
	dp->has_mac1_key = true;
	pthread_rwlock_unlock(&dp->lock);
}

/* An initiation or a response, well formed as far as its header and size go
 * (so that Python would get as far as its mac1), with a mac1 key to check it. */
static bool checkable_handshake(const dp_t *dp, const uint8_t *d, size_t n)
{
	bool handshake = (d[0] == MESSAGE_INITIATION && n == INITIATION_SIZE) ||
			 (d[0] == MESSAGE_RESPONSE && n == RESPONSE_SIZE);
	return dp->has_mac1_key && handshake && (d[1] == 0 || d[1] == MARKER_L2) && !d[2] && !d[3];
}

/* The one kind of datagram C handles itself: a transport message of this
 * plane's mode. */
static inline bool is_our_transport(const dp_t *dp, const uint8_t *d, size_t n)
{
	return n >= 4 && d[0] == MESSAGE_TRANSPORT && d[1] == (dp->tap ? MARKER_L2 : 0) && !d[2] &&
	       !d[3];
}

/* Handshakes, cookies, the other mode's transport, garbage: Python decides,
 * on all but a handshake message whose mac1 is wrong: made by someone who does
 * not know our public key.  The kernel drops these first of all (cookie.c),
 * and so can C, without waking Python.  An initiation whose mac1 is right goes
 * to the handshake worker first, unless Python is under load.  Lock held
 * (read). */
static void rx_to_python(struct rx_state *r, const uint8_t *d, size_t n,
			 const struct sockaddr_storage *src, uint64_t now)
{
	if (n >= 4 && checkable_handshake(r->dp, d, n)) {
		if (!mac1_valid(&r->mac1, r->dp->mac1_key, d, n)) {
			STAT_ADD(r->dp->st.rx_bad_mac1, 1);
			return;
		}
		if (handshake_take(r->dp, src, d, n, now))
			return;
	}
	upcall_datagram(r->dp, src, d, n, now);
}

/* The keypair whose receiver index the transport message names. */
static struct keypair *lookup_keypair(dp_t *dp, const uint8_t *d, size_t n)
{
	if (n < KEEPALIVE_SIZE) {
		STAT_ADD(dp->st.rx_malformed, 1);
		return NULL;
	}
	struct keypair *kp = index_lookup(dp, le32(d + 4));
	if (!kp)
		STAT_ADD(dp->st.rx_unknown_index, 1);
	return kp;
}

/* Whether the keypair may still receive the message (Reject-After-Time,
 * Reject-After-Messages).  *counter: its counter. */
static bool may_receive(struct keypair *kp, const uint8_t *d, uint64_t now, uint64_t *counter)
{
	*counter = le64(d + 8);
	if (age_ns(now, kp->birth_ns) >= (int64_t)REJECT_AFTER_TIME_NS ||
	    *counter >= REJECT_AFTER_MESSAGES) {
		STAT_ADD(kp->peer->drop_expired_keypair, 1);
		return false;
	}
	return true;
}

/* Open the message in place, if the keypair may still receive it and the tag
 * is right.  *counter: its counter. */
static bool decrypt_packet(struct rx_state *r, struct keypair *kp, uint8_t *d, size_t n,
			   uint64_t now, uint64_t *counter)
{
	if (!may_receive(kp, d, now, counter))
		return false;
	uint8_t nonce[12];
	aead_nonce(nonce, *counter);
	uint8_t *plain = d + TRANSPORT_HEADER_SIZE;
	if (aead_open(&r->aead, kp->recv_key, kp->key_id, nonce, NULL, 0, plain,
		      n - TRANSPORT_HEADER_SIZE, plain)) {
		STAT_ADD(kp->peer->drop_bad_tag, 1);
		return false;
	}
	return true;
}

/* The replay window, after the tag (an unauthenticated counter must not move
 * it). */
static bool counter_validate(struct keypair *kp, uint64_t counter)
{
	pthread_mutex_lock(&kp->replay_lock);
	bool fresh = replay_validate(&kp->replay, counter);
	pthread_mutex_unlock(&kp->replay_lock);
	if (!fresh)
		STAT_ADD(kp->peer->drop_replay, 1);
	return fresh;
}

/* tap: a whole Ethernet header, from a source MAC the peer may send from,
 * learned behind it.  The frame's length, or 0: dropped (counted). */
static size_t check_inner_frame(struct rx_state *r, struct peer *p, const uint8_t *frame,
				size_t len, uint64_t now)
{
	const uint8_t *source = frame + 6;
	if (len < ETHERNET_HEADER_SIZE) {
		STAT_ADD(p->drop_malformed, 1);
		return 0;
	}
	if (!peer_allows_mac(p, source)) {
		STAT_ADD(p->drop_bad_source, 1); /* outside its allowed_macs */
		return 0;
	}
	/* `now` is per batch, so learning the same MAC for the same peer twice
	 * in one batch changes nothing: skip the lock. */
	if (r->mac_memo.valid && r->mac_memo.peer_id == p->id && !memcmp(r->mac_memo.mac, source, 6))
		return len;
	int learned = mac_learn(r->dp, source, p->id, now);
	if (learned == DP_MAC_HELD_BY_OTHER) {
		/* The L2 form of a wrong inner source: another peer's host's
		 * address. */
		STAT_ADD(p->drop_bad_source, 1);
		return 0;
	}
	if (learned == DP_MAC_TABLE_FULL) {
		STAT_ADD(r->dp->st.rx_mac_table_full, 1);
	} else {
		memcpy(r->mac_memo.mac, source, 6);
		r->mac_memo.peer_id = p->id;
		r->mac_memo.valid = true;
	}
	return len;
}

/* tun: a well-formed IP packet whose source the peer's allowed IPs hold
 * (cryptokey routing, whitepaper 2).  The packet's own length (the padding
 * cut off), or 0: dropped (counted). */
static size_t check_inner_packet(struct rx_state *r, struct peer *p, const uint8_t *ip,
				 size_t len)
{
	int family;
	const uint8_t *source;
	len = inner_ip(ip, len, &family, &source);
	if (!len) {
		STAT_ADD(p->drop_malformed, 1);
		return 0;
	}
	size_t alen = family == AF_INET ? 4 : 16;
	if (!r->src_memo.valid || r->src_memo.family != family ||
	    memcmp(r->src_memo.addr, source, alen)) {
		r->src_memo.peer = allowedips_lookup(r->dp, family, source);
		r->src_memo.family = family;
		memcpy(r->src_memo.addr, source, alen);
		r->src_memo.valid = true;
	}
	if (r->src_memo.peer != p) {
		STAT_ADD(p->drop_bad_source, 1);
		return 0;
	}
	return len;
}

/* Write what the batch's GRO holds to the device. */
static void write_to_device(struct rx_state *r)
{
	dp_t *dp = r->dp;
	int errs = gro_flush(r->gro, dp->dev_fd, dp->vnet, &dp->st.rx_coalesced);
	if (errs)
		STAT_ADD(dp->st.dev_write_errors, errs);
}

/* Into the batch's GRO, which writes it to the device at the end of the batch
 * (or now, to make room). */
static void deliver_to_device(struct rx_state *r, uint8_t *pkt, size_t len)
{
	bool tap = r->dp->tap, vnet = r->dp->vnet;
	if (!gro_add(r->gro, pkt, len, tap, vnet)) {
		write_to_device(r);
		gro_add(r->gro, pkt, len, tap, vnet);
	}
}

/* An authentic, fresh message (the kernel's wg_packet_consume_data_done): the
 * peer was heard from, at this endpoint, and under NEXT confirms its
 * handshake; a keepalive ends there, a packet its sender may send goes to the
 * device. */
static void consume_data_done(struct rx_state *r, struct keypair *kp, uint8_t *d, size_t n,
			      const struct sockaddr_storage *src, uint64_t now)
{
	struct peer *p = kp->peer;
	STAT_ADD(p->rx_bytes, n);
	STAT_ADD(p->rx_packets, 1);
	STAT_SET(p->last_rx_ns, now);
	update_endpoint(r->dp, p, src);
	if (p->keypairs[DP_NEXT] == kp)
		note_confirm(r, kp); /* the initiator used it: handshake confirmed */
	uint8_t *plain = d + TRANSPORT_HEADER_SIZE;
	size_t plen = n - KEEPALIVE_SIZE;
	events_add(r->dp, p, &p->ev_rx, n, plen != 0, now);
	if (!plen)
		return; /* keepalive */
	STAT_ADD(p->rx_data_packets, 1);
	STAT_SET(p->last_rx_data_ns, now);
	plen = r->dp->tap ? check_inner_frame(r, p, plain, plen, now)
			  : check_inner_packet(r, p, plain, plen);
	if (plen)
		deliver_to_device(r, plain, plen);
}

/* The ring's slots, each opened, in the order they were made (each peer's
 * packets as they came): the replay window, then the device.  Lock held
 * (read), so that the keypairs they name are still there. */
static void rx_release(struct rx_state *r, uint64_t now)
{
	struct crypto_slot *s;
	while ((s = crypto_ring_next(&r->ring))) {
		if (atomic_load_explicit(&s->state, memory_order_relaxed) != SLOT_DONE)
			STAT_ADD(s->kp->peer->drop_bad_tag, 1);
		else if (counter_validate(s->kp, s->counter))
			consume_data_done(r, s->kp, s->out - TRANSPORT_HEADER_SIZE,
					  s->len + TRANSPORT_HEADER_SIZE, s->src, now);
	}
}

/* A transport message under kp: opened, checked and delivered now, or, with
 * crypto workers, opened by one of them and the rest once its slot is
 * released (rx_release). */
static void rx_transport(struct rx_state *r, struct keypair *kp, uint8_t *d, size_t n,
			 const struct sockaddr_storage *src, uint64_t now)
{
	uint64_t counter;
	if (!r->parallel) {
		if (decrypt_packet(r, kp, d, n, now, &counter) && counter_validate(kp, counter))
			consume_data_done(r, kp, d, n, src, now);
		return;
	}
	if (!may_receive(kp, d, now, &counter))
		return;
	if (crypto_ring_full(&r->ring))
		rx_release(r, now);
	uint8_t *sealed = d + TRANSPORT_HEADER_SIZE;
	struct crypto_slot s = {.key = kp->recv_key, .key_id = kp->key_id, .counter = counter,
				.in = sealed, .out = sealed, .len = (uint32_t)(n - TRANSPORT_HEADER_SIZE),
				.op = CRYPTO_OPEN, .kp = kp, .src = src};
	crypto_ring_push(&r->ring, &s);
}

/* One datagram. Lock held (read). */
static void rx_datagram(struct rx_state *r, uint8_t *d, size_t n,
			const struct sockaddr_storage *src, uint64_t now)
{
	if (!is_our_transport(r->dp, d, n)) {
		rx_to_python(r, d, n, src, now);
		return;
	}
	struct keypair *kp = lookup_keypair(r->dp, d, n);
	if (kp)
		rx_transport(r, kp, d, n, src, now);
}

/* Buffer i of the batch: one datagram, or a UDP GRO train of them. Lock held
 * (read). */
static void rx_buffer(struct rx_state *r, int i, uint64_t now)
{
	const struct sockaddr_storage *src = &r->udp.src[i];
	size_t len = r->udp.mm[i].msg_len;
	if (r->udp.mm[i].msg_hdr.msg_flags & MSG_TRUNC) {
		STAT_ADD(r->dp->st.rx_malformed, 1);
		return;
	}
	size_t seg = udp_segment_size(&r->udp, i);
	if (!seg) { /* an empty datagram is still Python's to see */
		upcall_datagram(r->dp, src, NULL, 0, now);
		return;
	}
	for (size_t off = 0; off < len; off += seg)
		rx_datagram(r, r->udp.bufs[i] + off, len - off < seg ? len - off : seg, src, now);
}

/* The handshakes the batch confirmed: their NEXT becomes CURRENT (under the
 * write lock, so after the batch), and what was staged for the peer goes
 * (the kernel's wg_packet_consume_data_done). */
static void confirm_keypairs(struct rx_state *r)
{
	for (int i = 0; i < r->nconfirms; i++) {
		uint32_t peer_id = r->confirms[i].peer_id;
		if (!peer_confirm_next(r->dp, peer_id, r->confirms[i].local_index))
			continue;
		staged_flush_peer(r->dp, peer_id);
		upcall_send(r->dp, DP_UPCALL_KEYPAIR_CONFIRMED, peer_id, NULL, NULL, 0);
	}
}

/* One batch UDP -> device: one recvmmsg of up to RX_MSGS_PER_BATCH
 * datagrams (each maybe a GRO train).  Returns the number received; fewer
 * than RX_MSGS_PER_BATCH means the socket is drained. */
int rx_batch(struct rx_state *r)
{
	dp_t *dp = r->dp;
	int n = udp_receive(dp, &r->udp);
	if (!n)
		return 0;
	uint64_t now = now_ns();
	r->nconfirms = 0;
	pthread_rwlock_rdlock(&dp->lock);
	r->src_memo.valid = r->mac_memo.valid = false;
	for (int i = 0; i < n; i++)
		rx_buffer(r, i, now);
	if (r->parallel)
		rx_release(r, now);
	pthread_rwlock_unlock(&dp->lock);
	write_to_device(r);
	confirm_keypairs(r);
	return n;
}

struct aead *rx_aead(struct rx_state *s)
{
	return &s->aead;
}
