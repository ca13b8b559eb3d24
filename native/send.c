/* SPDX-License-Identifier: MIT
 *
 * send.c -- device -> UDP: read a batch from the TUN/TAP device, segment
 * super-packets, route each to a peer (allowed-ips in tun mode, the MAC
 * table in tap mode), encrypt into transport messages queued for the socket,
 * which sends them (socket.c).
 */
#include <errno.h>
#include <linux/virtio_net.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "pipeline.h"

struct tx_state {
	dp_t *dp;
	struct aead aead;
	bool parallel; /* crypto workers seal, through ring (pipeline.h) */
	struct crypto_ring ring;
	int nbufs;
	size_t buf_size;
	uint8_t **bufs;
	ssize_t *lens;
	uint8_t *seg; /* one plain segment to stage */
	struct udp_send_queue out;
	struct peer *ep_peer[UDP_SEND_MAX_EPS]; /* whose endpoint each of out.eps is */
};

/* Padding (whitepaper 5.4.6; kernel send.c calculate_skb_padding()): pad the
 * plaintext to a multiple of 16 but never beyond the MTU.  Tap mode does not
 * pad: an Ethernet frame has no length field to strip padding by. */
static size_t padding_for(const dp_t *dp, size_t len)
{
	if (dp->tap || (int)len >= dp->mtu)
		return 0;
	size_t padded = (len + MESSAGE_PADDING_MULTIPLE - 1) & ~(size_t)(MESSAGE_PADDING_MULTIPLE - 1);
	if (padded > (size_t)dp->mtu)
		padded = dp->mtu;
	return padded - len;
}

/* The header of a transport message under kp's next counter (*counter), at
 * out.  false: kp's counter ran out. */
static bool message_header(dp_t *dp, struct keypair *kp, uint8_t *out, uint64_t *counter)
{
	*counter = atomic_fetch_add_explicit(&kp->send_counter, 1, memory_order_relaxed);
	if (*counter >= REJECT_AFTER_MESSAGES)
		return false;
	out[0] = MESSAGE_TRANSPORT;
	out[1] = dp->tap ? MARKER_L2 : 0;
	out[2] = out[3] = 0;
	for (int i = 0; i < 4; i++)
		out[4 + i] = (uint8_t)(kp->remote_index >> (8 * i)); /* LE */
	for (int i = 0; i < 8; i++)
		out[8 + i] = (uint8_t)(*counter >> (8 * i)); /* LE */
	return true;
}

size_t message_build(dp_t *dp, struct aead *aead, struct keypair *kp, const uint8_t *in,
		     size_t len, uint8_t *out)
{
	uint64_t counter;
	if (!message_header(dp, kp, out, &counter))
		return 0;
	size_t pad = padding_for(dp, len);
	uint8_t nonce[12];
	aead_nonce(nonce, counter);
	if (aead_seal(aead, kp->send_key, kp->key_id, nonce, NULL, 0, in, len, pad,
		      out + TRANSPORT_HEADER_SIZE))
		return 0;
	return TRANSPORT_HEADER_SIZE + len + pad + TAG_SIZE;
}

/* message_build's parallel form: the header now, with the counter taken in
 * read order by this one thread, and the seal as a slot on the ring, for
 * message msg of the send queue.  The message's length, or 0: kp's counter
 * ran out. */
static size_t message_post(struct tx_state *t, struct keypair *kp, const uint8_t *in, size_t len,
			   uint8_t *out, uint32_t msg)
{
	uint64_t counter;
	if (!message_header(t->dp, kp, out, &counter))
		return 0;
	size_t pad = padding_for(t->dp, len);
	struct crypto_slot s = {.key = kp->send_key, .key_id = kp->key_id, .counter = counter,
				.in = in, .out = out + TRANSPORT_HEADER_SIZE, .len = (uint32_t)len,
				.pad = (uint8_t)pad, .op = CRYPTO_SEAL, .kp = kp, .msg = msg};
	crypto_ring_push(&t->ring, &s);
	return TRANSPORT_HEADER_SIZE + len + pad + TAG_SIZE;
}

/* The ring's slots, each sealed, in the order they were made: accounted as
 * sent, or (an AEAD failure) taken out of the send queue.  Lock held (read),
 * so that the keypairs they name are still there.  Without crypto workers,
 * nothing: message_build sealed them. */
static void tx_release(struct tx_state *t, uint64_t now)
{
	struct udp_send_queue *q = &t->out;
	struct crypto_slot *s;
	bool failed = false;
	if (!t->parallel)
		return;
	while ((s = crypto_ring_next(&t->ring))) {
		if (atomic_load_explicit(&s->state, memory_order_relaxed) == SLOT_DONE) {
			account_tx(t->dp, s->kp->peer, q->msgs[s->msg].len, s->len, now);
		} else {
			q->msgs[s->msg].len = 0;
			failed = true;
		}
	}
	int kept = 0;
	for (int i = 0; failed && i < q->nmsgs; i++)
		if (q->msgs[i].len)
			q->msgs[kept++] = q->msgs[i];
	if (failed)
		q->nmsgs = kept;
}

/* Send what the queue holds, sealed first. */
static void tx_flush(struct tx_state *t, uint64_t now)
{
	tx_release(t, now);
	udp_send_queued(t->dp, &t->out);
}

void account_tx(dp_t *dp, struct peer *p, size_t mlen, size_t plain_len, uint64_t now)
{
	STAT_ADD(p->tx_bytes, mlen);
	STAT_ADD(p->tx_packets, 1);
	STAT_SET(p->last_tx_ns, now);
	if (plain_len)
		STAT_SET(p->last_tx_data_ns, now);
	events_add(dp, p, &p->ev_tx, mlen, plain_len != 0, now);
}

struct tx_state *tx_state_new(dp_t *dp)
{
	struct tx_state *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->dp = dp;
	t->nbufs = dp->vnet ? TX_READS_PER_BATCH : TX_READS_PER_BATCH_PLAIN;
	t->buf_size = dp->vnet ? VNET_HDR_LEN + MAX_SUPER_PACKET : (size_t)dp->read_mtu + 256;
	int aead_err = aead_init(&t->aead, 1);
	t->bufs = calloc(t->nbufs, sizeof(*t->bufs));
	t->lens = calloc(t->nbufs, sizeof(*t->lens));
	t->seg = malloc(MAX_SUPER_PACKET + 64);
	int queue_err = udp_send_queue_init(&t->out);
	t->parallel = dp->crypto != NULL;
	int ring_err = t->parallel ? crypto_ring_init(&t->ring, dp->crypto, UDP_SEND_MAX_MSGS, &t->aead) : 0;
	if (aead_err || queue_err || ring_err || !t->bufs || !t->lens || !t->seg)
		goto fail;
	for (int i = 0; i < t->nbufs; i++)
		if (!(t->bufs[i] = malloc(t->buf_size)))
			goto fail;
	return t;
fail:
	tx_state_free(t);
	return NULL;
}

void tx_state_free(struct tx_state *t)
{
	if (!t)
		return;
	if (t->bufs)
		for (int i = 0; i < t->nbufs; i++)
			free(t->bufs[i]);
	free(t->bufs);
	free(t->lens);
	free(t->seg);
	udp_send_queue_free(&t->out);
	aead_free(&t->aead);
	if (t->parallel)
		crypto_ring_free(&t->ring);
	free(t);
}

/* The peer's endpoint in the send queue, added if it is not there yet; -1:
 * the peer has none. */
static int endpoint_slot(struct tx_state *t, struct peer *p, uint64_t now)
{
	struct udp_send_queue *q = &t->out;
	for (int i = q->neps - 1; i >= 0; i--)
		if (t->ep_peer[i] == p)
			return i;
	if (q->neps == UDP_SEND_MAX_EPS)
		tx_flush(t, now);
	int i = q->neps;
	peer_copy_endpoint(p, &q->eps[i], &q->eplens[i]);
	if (!q->eplens[i])
		return -1;
	t->ep_peer[i] = p;
	q->neps++;
	return i;
}

/* No usable session: the read's segments wait for one (staged.c), and Python
 * hears that the peer needs a key.  Counted first, so that whoever reads the
 * upcall finds them counted. */
static void stage_segments(struct tx_state *t, struct peer *p, const struct gso_plan *g,
			   int usable)
{
	if (usable == -ENOKEY)
		STAT_ADD(p->drop_no_keypair, g->nseg);
	else if (usable)
		STAT_ADD(p->drop_expired_keypair, g->nseg);
	for (int i = 0; i < g->nseg; i++)
		staged_add(p, t->seg, gso_plan_segment(g, i, t->seg));
}

/* Segment i of a read, encrypted under kp into the send queue (the kernel's
 * encrypt_packet).  false: the peer has no endpoint, the read's other
 * segments neither (counted). */
static bool seal_segment(struct tx_state *t, struct peer *p, struct keypair *kp,
			 const struct gso_plan *g, int i, uint64_t now)
{
	dp_t *dp = t->dp;
	struct udp_send_queue *q = &t->out;
	size_t room = TRANSPORT_HEADER_SIZE + (g->gso ? (size_t)g->hdrs + g->gso_size : g->len) +
		      MESSAGE_PADDING_MULTIPLE + TAG_SIZE;
	if (q->used + room > UDP_SEND_ARENA_SIZE || q->nmsgs == UDP_SEND_MAX_MSGS)
		tx_flush(t, now); /* rare: flush under the read lock */
	int ep = endpoint_slot(t, p, now);
	if (ep < 0) {
		STAT_ADD(dp->st.tx_no_route, g->nseg - i);
		return false;
	}
	uint8_t *out = q->arena + q->used;
	const uint8_t *in;
	size_t len;
	if (g->gso || g->needs_csum) {
		len = gso_plan_segment(g, i, out + TRANSPORT_HEADER_SIZE);
		in = out + TRANSPORT_HEADER_SIZE;
	} else {
		in = g->pkt; /* encrypt straight from the read buffer */
		len = g->len;
	}
	size_t mlen = t->parallel ? message_post(t, kp, in, len, out, (uint32_t)q->nmsgs)
				  : message_build(dp, &t->aead, kp, in, len, out);
	if (!mlen) {
		STAT_ADD(p->drop_expired_keypair, 1);
		/* The counter ran out under us (this read's earlier segments, or
		 * another worker): the rest wait for a new session, as a read
		 * that found none does.  (An AEAD failure leaves the counter be,
		 * and `in` may be half sealed: dropped.) */
		if (keypair_usable_for_send(kp, now) == -EKEYEXPIRED) {
			staged_add(p, in, len);
			staged_need_key(dp, p);
		}
		return true;
	}
	q->msgs[q->nmsgs++] = (struct udp_queued){(uint32_t)q->used, (uint32_t)mlen, ep};
	q->used += mlen;
	if (!t->parallel)
		account_tx(dp, p, mlen, len, now); /* else once sealed: tx_release */
	return true;
}

/* The segments of one device read, for one peer. Lock held (read). */
static void tx_to_peer(struct tx_state *t, struct peer *p, const struct gso_plan *g, uint64_t now)
{
	struct keypair *kp = p->keypairs[DP_CURRENT];
	int usable = keypair_usable_for_send(kp, now);
	if (usable) {
		stage_segments(t, p, g, usable);
		staged_need_key(t->dp, p);
		return;
	}
	if (STAT_GET(p->staged_count)) {
		/* A session came while packets waited (its keepalive not sent yet):
		 * they go first, then these, in the order they were read. */
		stage_segments(t, p, g, 0);
		tx_flush(t, now);
		staged_flush(t->dp, p, now);
		return;
	}
	for (int i = 0; i < g->nseg; i++)
		if (!seal_segment(t, p, kp, g, i, now))
			return;
}

static const uint8_t *route_dst(const uint8_t *ip, size_t len, int *family)
{
	if (len >= 20 && ip[0] >> 4 == 4) {
		*family = AF_INET;
		return ip + 16;
	}
	if (len >= 40 && ip[0] >> 4 == 6) {
		*family = AF_INET6;
		return ip + 24;
	}
	return NULL;
}

/* A device read as the segments to send (offload.c's gso_plan): behind its
 * virtio header, and in tap mode behind the frame's VLAN tags, whose
 * ethertype is *type.  false: malformed (counted). */
static bool plan_segments(dp_t *dp, const uint8_t *buf, size_t n, struct gso_plan *g,
			  uint16_t *type)
{
	struct vnet_hdr vh = {0};
	if (dp->vnet) {
		if (n < VNET_HDR_LEN) {
			STAT_ADD(dp->st.tx_malformed, 1);
			return false;
		}
		struct virtio_net_hdr raw;
		memcpy(&raw, buf, sizeof(raw));
		vh = (struct vnet_hdr){raw.flags, raw.gso_type, raw.hdr_len, raw.gso_size,
				       raw.csum_start, raw.csum_offset};
		buf += VNET_HDR_LEN;
		n -= VNET_HDR_LEN;
	}
	int l3off = 0;
	*type = 0;
	if (dp->tap)
		l3off = eth_l3_offset(buf, n, type);
	if (l3off < 0 || gso_plan_init(g, &vh, buf, n, l3off) < 0) {
		STAT_ADD(dp->st.tx_malformed, 1);
		return false;
	}
	if (g->gso)
		STAT_ADD(dp->st.tx_super_packets, 1);
	return true;
}

/* tun: to the peer whose allowed IPs hold the destination (cryptokey
 * routing); a packet no peer's hold goes up for Python's ICMP answer. */
static void tx_route(struct tx_state *t, const struct gso_plan *g, uint64_t now)
{
	dp_t *dp = t->dp;
	int family;
	const uint8_t *dst = route_dst(g->pkt, g->len, &family);
	struct peer *p = dst ? allowedips_lookup(dp, family, dst) : NULL;
	if (p) {
		tx_to_peer(t, p, g, now);
	} else {
		STAT_ADD(dp->st.tx_no_route, g->nseg);
		upcall_unrouted(dp, g->pkt, g->len, now);
	}
}

/* tap: segments too big for the tunnel, in a frame that could get a
 * "fragmentation needed" or "packet too big" answer: IPv4 with Don't
 * Fragment, or IPv6, behind its VLAN tags (type: eth_l3_offset()).  Python
 * (tunnel/core/l2.py) makes the final call; everything else is sent on and the
 * underlay fragments the outer datagram. */
static bool deserves_too_big(const dp_t *dp, const struct gso_plan *g, uint16_t type)
{
	const uint8_t *frame = g->pkt;
	size_t seg_payload = g->gso ? (size_t)g->hdrs - ETHERNET_HEADER_SIZE + g->gso_size
				    : g->len - ETHERNET_HEADER_SIZE;
	if (seg_payload <= (size_t)dp->mtu || (size_t)g->l3off + 20 > g->len)
		return false;
	return (type == 0x0800 && (frame[g->l3off + 6] & 0x40)) || type == 0x86dd;
}

/* tap: switch the frame as a learning bridge does. */
static void tx_switch(struct tx_state *t, const struct gso_plan *g, uint64_t now)
{
	dp_t *dp = t->dp;
	const uint8_t *frame = g->pkt;
	/* Split horizon: a frame whose source was learned behind a peer came from
	 * that peer, and a bridge port in hairpin mode hands it back to relay it
	 * to the others; it must never return to where it came from. */
	uint32_t pid, from = 0;
	struct peer *p;
	bool relayed = mac_lookup(dp, frame + 6, now, &from);
	if (!(frame[0] & 1) && mac_lookup(dp, frame, now, &pid) && (p = peer_lookup(dp, pid))) {
		if (!relayed || pid != from)
			tx_to_peer(t, p, g, now); /* known unicast */
		return;
	}
	/* Broadcast, multicast, unknown unicast: flood, like a bridge.  Peers
	 * without a usable keypair get a NEED_KEY upcall instead (tx_to_peer),
	 * so Python can start the handshake that lets the frame through. */
	for (int i = 0; i < dp->npeers; i++) {
		if (!relayed || dp->peer_list[i]->id != from)
			tx_to_peer(t, dp->peer_list[i], g, now);
	}
	if (!dp->npeers)
		STAT_ADD(dp->st.tx_no_route, g->nseg);
}

/* One read from the device. Lock held (read).  answer_too_big: an oversized
 * frame goes up for Python's ICMP answer; false for one Python handed back
 * (dp_transmit_frame). */
static void tx_packet(struct tx_state *t, uint8_t *buf, size_t n, uint64_t now,
		      bool answer_too_big)
{
	dp_t *dp = t->dp;
	struct gso_plan g;
	uint16_t type;
	if (!plan_segments(dp, buf, n, &g, &type))
		return;
	if (!dp->tap)
		tx_route(t, &g, now);
	else if (answer_too_big && deserves_too_big(dp, &g, type))
		/* The sender should hear why, as from a router, rather than have
		 * its frames fragmented underneath for ever.  The read goes up
		 * whole, virtio header included: if Python does not answer, it
		 * hands it back to be segmented and checksummed as any other. */
		upcall_send(dp, DP_UPCALL_TOO_BIG, 0, NULL, buf, n);
	else
		tx_switch(t, &g, now);
}

/* One batch device -> UDP: up to t->nbufs reads, then encrypt and send them.
 * Returns the number of reads; fewer than tx_batch_max() means the device
 * is drained. */
int tx_batch(struct tx_state *t)
{
	dp_t *dp = t->dp;
	int n = 0;
	while (n < t->nbufs) {
		ssize_t r = read(dp->dev_fd, t->bufs[n], t->buf_size);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			break; /* EAGAIN: drained; other errors: retry at next poll */
		}
		t->lens[n++] = r;
	}
	if (!n)
		return 0;
	uint64_t now = now_ns();
	pthread_rwlock_rdlock(&dp->lock);
	for (int i = 0; i < n; i++)
		tx_packet(t, t->bufs[i], (size_t)t->lens[i], now, true);
	tx_release(t, now);
	pthread_rwlock_unlock(&dp->lock);
	udp_send_queued(dp, &t->out);
	return n;
}

int tx_batch_max(const struct tx_state *t)
{
	return t->nbufs;
}

int dp_send_packet(dp_t *dp, uint32_t peer_id, const uint8_t *pkt, size_t len)
{
	if (len > MAX_SUPER_PACKET)
		return -EMSGSIZE;
	uint64_t now = now_ns();
	int ret = -ENOENT;
	pthread_rwlock_rdlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	if (p) {
		/* Python's own packets are few (keepalives, mostly): through the
		 * queue, as the kernel sends every packet. */
		if (len || !STAT_GET(p->staged_count))
			staged_add(p, pkt, len);
		ret = staged_flush(dp, p, now);
	}
	pthread_rwlock_unlock(&dp->lock);
	return ret;
}

struct aead *tx_aead(struct tx_state *s)
{
	return &s->aead;
}

int dp_transmit_frame(dp_t *dp, const uint8_t *data, size_t len)
{
	if (!dp->tap || len > MAX_SUPER_PACKET + (dp->vnet ? VNET_HDR_LEN : 0))
		return -EINVAL;
	/* A state of its own: the workers' are theirs alone.  Rare (an oversized
	 * frame Python does not answer), so its allocation does not matter. */
	struct tx_state *t = tx_state_new(dp);
	if (!t)
		return -ENOMEM;
	if (len > t->buf_size) { /* without virtio headers a read holds read_mtu + 256 */
		tx_state_free(t);
		return -EINVAL;
	}
	memcpy(t->bufs[0], data, len);
	uint64_t now = now_ns();
	pthread_rwlock_rdlock(&dp->lock);
	tx_packet(t, t->bufs[0], len, now, false);
	tx_release(t, now);
	pthread_rwlock_unlock(&dp->lock);
	udp_send_queued(dp, &t->out);
	tx_state_free(t);
	return 0;
}
