/* SPDX-License-Identifier: MIT
 *
 * staged.c -- packets waiting for a peer's session, held in the data path as
 * the kernel holds them (send.c wg_packet_send_staged_packets, with its
 * staged_packet_queue in struct wg_peer): at most MAX_STAGED_PACKETS a peer,
 * the oldest dropped and counted, sent in order once CURRENT is usable.
 *
 * Python hears once that a peer needs a key (DP_UPCALL_NEED_KEY), not once a
 * packet: the upcall goes again only after keys changed (dp_keypair_install,
 * dp_keypair_clear) or the queue was purged (dp_peer_purge_staged), or when the
 * last one was lost to a full control socket.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct staged_packet {
	struct staged_packet *next;
	size_t len;
	uint8_t data[];
};

void staged_init(struct peer *p)
{
	pthread_mutex_init(&p->staged_lock, NULL);
}

static void staged_drop_all(struct peer *p) /* staged_lock held */
{
	struct staged_packet *s = p->staged_head;
	while (s) {
		struct staged_packet *next = s->next;
		free(s);
		s = next;
	}
	p->staged_head = p->staged_tail = NULL;
	STAT_SET(p->staged_count, 0);
}

void staged_free(struct peer *p)
{
	staged_drop_all(p);
	pthread_mutex_destroy(&p->staged_lock);
}

static struct staged_packet *staged_pop(struct peer *p) /* staged_lock held */
{
	struct staged_packet *s = p->staged_head;
	p->staged_head = s->next;
	if (!p->staged_head)
		p->staged_tail = NULL;
	atomic_fetch_sub_explicit(&p->staged_count, 1, memory_order_relaxed);
	return s;
}

void staged_add(struct peer *p, const uint8_t *pkt, size_t len)
{
	struct staged_packet *s = malloc(sizeof(*s) + len);
	pthread_mutex_lock(&p->staged_lock);
	if (!s) {
		STAT_ADD(p->staged_overflow, 1);
	} else {
		if (STAT_GET(p->staged_count) == MAX_STAGED_PACKETS) {
			free(staged_pop(p)); /* the oldest makes room */
			STAT_ADD(p->staged_overflow, 1);
		}
		s->next = NULL;
		s->len = len;
		memcpy(s->data, pkt, len);
		if (p->staged_tail)
			p->staged_tail->next = s;
		else
			p->staged_head = s;
		p->staged_tail = s;
		STAT_ADD(p->staged_count, 1);
	}
	pthread_mutex_unlock(&p->staged_lock);
}

void staged_need_key(dp_t *dp, struct peer *p)
{
	if (atomic_exchange(&p->key_wanted, true))
		return; /* Python knows */
	if (!upcall_send(dp, DP_UPCALL_NEED_KEY, p->id, NULL, NULL, 0))
		STAT_SET(p->key_wanted, false); /* lost: the next packet says it again */
}

int staged_flush(dp_t *dp, struct peer *p, uint64_t now)
{
	if (!STAT_GET(p->staged_count))
		return 0;
	struct sockaddr_storage ep;
	socklen_t eplen;
	peer_copy_endpoint(p, &ep, &eplen);
	if (!eplen)
		return -EDESTADDRREQ;
	/* Own crypto state: the callers are Python's thread and the workers' receive
	 * side, neither of which has a sealing context, and a flush comes once a
	 * handshake, not once a packet. */
	struct aead aead;
	uint8_t *out = malloc(MAX_SUPER_PACKET + TRANSPORT_HEADER_SIZE + MESSAGE_PADDING_MULTIPLE +
			      TAG_SIZE);
	int ret = aead_init(&aead, 1);
	if (!out || ret) {
		free(out);
		if (!ret)
			aead_free(&aead);
		return -ENOMEM;
	}
	/* Under the queue's lock to the last send, so that packets staged meanwhile
	 * go after these, and two flushes do not interleave. */
	pthread_mutex_lock(&p->staged_lock);
	while (p->staged_head) {
		struct keypair *kp = p->keypairs[DP_CURRENT];
		if (keypair_usable_for_send(kp, now)) {
			ret = -ENOKEY;
			break;
		}
		struct staged_packet *s = p->staged_head;
		size_t mlen = message_build(dp, &aead, kp, s->data, s->len, out);
		if (!mlen) {
			ret = -ENOKEY; /* its counter ran out: this one waits too */
			break;
		}
		account_tx(dp, p, mlen, s->len, now);
		free(staged_pop(p));
		if (udp_send_one(dp, out, mlen, &ep, eplen))
			STAT_ADD(dp->st.tx_send_errors, 1);
	}
	pthread_mutex_unlock(&p->staged_lock);
	aead_free(&aead);
	free(out);
	return ret;
}

void staged_flush_peer(dp_t *dp, uint32_t peer_id)
{
	uint64_t now = now_ns();
	pthread_rwlock_rdlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	if (p)
		staged_flush(dp, p, now);
	pthread_rwlock_unlock(&dp->lock);
}

int dp_peer_purge_staged(dp_t *dp, uint32_t peer_id)
{
	pthread_rwlock_rdlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	if (p) {
		pthread_mutex_lock(&p->staged_lock);
		staged_drop_all(p);
		pthread_mutex_unlock(&p->staged_lock);
		STAT_SET(p->key_wanted, false);
	}
	pthread_rwlock_unlock(&dp->lock);
	return p ? 0 : -ENOENT;
}
