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
#include <linux/udp.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define RX_BUF_SIZE 65536
#define RX_GRO_PKTS 1024
#define RX_MAX_CONFIRMS 16

struct rx_state {
	dp_t *dp;
	struct aead aead;
	struct mac1 mac1;
	uint8_t *bufs[RX_MSGS_PER_BATCH];
	struct mmsghdr mm[RX_MSGS_PER_BATCH];
	struct iovec iov[RX_MSGS_PER_BATCH];
	struct sockaddr_storage src[RX_MSGS_PER_BATCH];
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cmsg[RX_MSGS_PER_BATCH];
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
	if (crypto_err || !r->gro)
		goto fail;
	for (int i = 0; i < RX_MSGS_PER_BATCH; i++)
		if (!(r->bufs[i] = malloc(RX_BUF_SIZE)))
			goto fail;
	return r;
fail:
	rx_state_free(r);
	return NULL;
}

void rx_state_free(struct rx_state *r)
{
	if (!r)
		return;
	for (int i = 0; i < RX_MSGS_PER_BATCH; i++)
		free(r->bufs[i]);
	gro_free(r->gro);
	aead_free(&r->aead);
	mac1_free(&r->mac1);
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
 * (so that Python would get as far as its mac1), whose mac1 is wrong: made by
 * someone who does not know our public key.  The kernel drops these first of
 * all (cookie.c), and so can C, without waking Python.  Lock held (read). */
static bool bad_mac1(struct rx_state *r, const uint8_t *d, size_t n)
{
	const dp_t *dp = r->dp;
	bool handshake = (d[0] == MESSAGE_INITIATION && n == INITIATION_SIZE) ||
			 (d[0] == MESSAGE_RESPONSE && n == RESPONSE_SIZE);
	return dp->has_mac1_key && handshake && (d[1] == 0 || d[1] == MARKER_L2) &&
	       !d[2] && !d[3] && !mac1_valid(&r->mac1, dp->mac1_key, d, n);
}

/* One datagram. Lock held (read). */
static void rx_datagram(struct rx_state *r, uint8_t *d, size_t n,
			const struct sockaddr_storage *src, uint64_t now)
{
	dp_t *dp = r->dp;
	if (n < 4 || d[0] != MESSAGE_TRANSPORT || d[1] != (dp->tap ? MARKER_L2 : 0) ||
	    d[2] || d[3]) {
		/* Handshakes, cookies, the other mode's transport, garbage:
		 * Python decides, on all but what fails mac1. */
		if (n >= 4 && bad_mac1(r, d, n))
			STAT_ADD(dp->st.rx_bad_mac1, 1);
		else
			upcall_datagram(dp, src, d, n, now);
		return;
	}
	if (n < KEEPALIVE_SIZE) {
		STAT_ADD(dp->st.rx_malformed, 1);
		return;
	}
	struct keypair *kp = index_lookup(dp, le32(d + 4));
	if (!kp) {
		STAT_ADD(dp->st.rx_unknown_index, 1);
		return;
	}
	struct peer *p = kp->peer;
	uint64_t counter = le64(d + 8);
	if (age_ns(now, kp->birth_ns) >= (int64_t)REJECT_AFTER_TIME_NS ||
	    counter >= REJECT_AFTER_MESSAGES) {
		STAT_ADD(p->drop_expired_keypair, 1);
		return;
	}
	uint8_t nonce[12];
	aead_nonce(nonce, counter);
	uint8_t *plain = d + TRANSPORT_HEADER_SIZE;
	if (aead_open(&r->aead, kp->recv_key, kp->key_id, nonce, NULL, 0, plain,
		      n - TRANSPORT_HEADER_SIZE, plain)) {
		STAT_ADD(p->drop_bad_tag, 1);
		return;
	}
	pthread_mutex_lock(&kp->replay_lock);
	bool fresh = replay_validate(&kp->replay, counter);
	pthread_mutex_unlock(&kp->replay_lock);
	if (!fresh) {
		STAT_ADD(p->drop_replay, 1);
		return;
	}
	STAT_ADD(p->rx_bytes, n);
	STAT_ADD(p->rx_packets, 1);
	STAT_SET(p->last_rx_ns, now);
	update_endpoint(dp, p, src);
	if (p->keypairs[DP_NEXT] == kp)
		note_confirm(r, kp); /* the initiator used it: handshake confirmed */
	size_t plen = n - KEEPALIVE_SIZE;
	if (!plen)
		return; /* keepalive */
	STAT_ADD(p->rx_data_packets, 1);
	STAT_SET(p->last_rx_data_ns, now);
	if (dp->tap) {
		if (plen < ETHERNET_HEADER_SIZE) {
			STAT_ADD(p->drop_malformed, 1);
			return;
		}
		if (!peer_allows_mac(p, plain + 6)) {
			STAT_ADD(p->drop_bad_source, 1); /* outside its allowed_macs */
			return;
		}
		/* `now` is per batch, so learning the same MAC for the same
		 * peer twice in one batch changes nothing: skip the lock. */
		if (!r->mac_memo.valid || r->mac_memo.peer_id != p->id ||
		    memcmp(r->mac_memo.mac, plain + 6, 6)) {
			int learned = mac_learn(dp, plain + 6, p->id, now);
			if (learned == DP_MAC_HELD_BY_OTHER) {
				/* The L2 form of a wrong inner source: another
				 * peer's host's address. */
				STAT_ADD(p->drop_bad_source, 1);
				return;
			}
			if (learned == DP_MAC_TABLE_FULL)
				STAT_ADD(dp->st.rx_mac_table_full, 1);
			else {
				memcpy(r->mac_memo.mac, plain + 6, 6);
				r->mac_memo.peer_id = p->id;
				r->mac_memo.valid = true;
			}
		}
	} else {
		int family;
		const uint8_t *isrc;
		plen = inner_ip(plain, plen, &family, &isrc);
		if (!plen) {
			STAT_ADD(p->drop_malformed, 1);
			return;
		}
		size_t alen = family == AF_INET ? 4 : 16;
		if (!r->src_memo.valid || r->src_memo.family != family ||
		    memcmp(r->src_memo.addr, isrc, alen)) {
			r->src_memo.peer = allowedips_lookup(dp, family, isrc);
			r->src_memo.family = family;
			memcpy(r->src_memo.addr, isrc, alen);
			r->src_memo.valid = true;
		}
		if (r->src_memo.peer != p) {
			STAT_ADD(p->drop_bad_source, 1);
			return;
		}
	}
	if (!gro_add(r->gro, plain, plen, dp->tap, dp->vnet)) {
		STAT_ADD(dp->st.dev_write_errors,
			 gro_flush(r->gro, dp->dev_fd, dp->vnet, &dp->st.rx_coalesced));
		gro_add(r->gro, plain, plen, dp->tap, dp->vnet);
	}
}

static int gro_size_of(struct msghdr *h)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
		if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
			int v;
			memcpy(&v, CMSG_DATA(c), sizeof(v));
			return v;
		}
	}
	return 0;
}

/* One batch UDP -> device: one recvmmsg of up to RX_MSGS_PER_BATCH
 * datagrams (each maybe a GRO train).  Returns the number received; fewer
 * than RX_MSGS_PER_BATCH means the socket is drained. */
int rx_batch(struct rx_state *r)
{
	dp_t *dp = r->dp;
	for (int i = 0; i < RX_MSGS_PER_BATCH; i++) {
		r->iov[i] = (struct iovec){r->bufs[i], RX_BUF_SIZE};
		struct msghdr *h = &r->mm[i].msg_hdr;
		memset(h, 0, sizeof(*h));
		h->msg_iov = &r->iov[i];
		h->msg_iovlen = 1;
		h->msg_name = &r->src[i];
		h->msg_namelen = sizeof(r->src[i]);
		h->msg_control = r->cmsg[i].buf;
		h->msg_controllen = sizeof(r->cmsg[i].buf);
	}
	int n = recvmmsg(dp->udp_fd, r->mm, RX_MSGS_PER_BATCH, MSG_DONTWAIT, NULL);
	if (n <= 0)
		return 0;
	uint64_t now = now_ns();
	r->nconfirms = 0;
	pthread_rwlock_rdlock(&dp->lock);
	r->src_memo.valid = r->mac_memo.valid = false;
	for (int i = 0; i < n; i++) {
		struct msghdr *h = &r->mm[i].msg_hdr;
		size_t len = r->mm[i].msg_len;
		if (h->msg_flags & MSG_TRUNC) {
			STAT_ADD(dp->st.rx_malformed, 1);
			continue;
		}
		size_t seg = (size_t)gro_size_of(h);
		if (!seg || seg > len)
			seg = len;
		if (!seg) { /* an empty datagram is still Python's to see */
			upcall_datagram(dp, &r->src[i], NULL, 0, now);
			continue;
		}
		for (size_t off = 0; off < len; off += seg)
			rx_datagram(r, r->bufs[i] + off, len - off < seg ? len - off : seg,
				    &r->src[i], now);
	}
	pthread_rwlock_unlock(&dp->lock);
	int errs = gro_flush(r->gro, dp->dev_fd, dp->vnet, &dp->st.rx_coalesced);
	if (errs)
		STAT_ADD(dp->st.dev_write_errors, errs);
	for (int i = 0; i < r->nconfirms; i++) {
		if (peer_confirm_next(dp, r->confirms[i].peer_id, r->confirms[i].local_index))
			upcall_send(dp, DP_UPCALL_KEYPAIR_CONFIRMED, r->confirms[i].peer_id,
				    NULL, NULL, 0);
	}
	return n;
}

struct aead *rx_aead(struct rx_state *s)
{
	return &s->aead;
}
