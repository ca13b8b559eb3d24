/* SPDX-License-Identifier: MIT
 *
 * peer.c -- peers, their keypairs and endpoints, and the index table that
 * maps a transport message's receiver_index to the keypair that decrypts it.
 *
 * Everything here runs under dp->lock (writers: the configuration calls;
 * readers: the workers).  Keypairs are separate objects so that rotation
 * only swaps pointers; a worker never holds a pointer across an unlock.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "pipeline.h"

static inline unsigned peer_bucket(uint32_t id)
{
	return (id * 2654435761u) >> (32 - PEER_HASH_BITS); /* Knuth's multiplicative hash */
}

static inline unsigned index_bucket(uint32_t idx)
{
	/* Indices are random (Python draws them), but hash anyway. */
	return (idx * 2654435761u) >> (32 - INDEX_HASH_BITS);
}

struct peer *peer_lookup(dp_t *dp, uint32_t id)
{
	struct peer *p = dp->peer_hash[peer_bucket(id)];
	while (p && p->id != id)
		p = p->hash_next;
	return p;
}

struct keypair *index_lookup(dp_t *dp, uint32_t local_index)
{
	struct keypair *kp = dp->index_hash[index_bucket(local_index)];
	while (kp && kp->local_index != local_index)
		kp = kp->index_next;
	return kp;
}

static void index_remove(dp_t *dp, struct keypair *kp)
{
	struct keypair **pp = &dp->index_hash[index_bucket(kp->local_index)];
	while (*pp && *pp != kp)
		pp = &(*pp)->index_next;
	if (*pp)
		*pp = kp->index_next;
}

static void keypair_free(dp_t *dp, struct keypair *kp)
{
	if (!kp)
		return;
	index_remove(dp, kp);
	pthread_mutex_destroy(&kp->replay_lock);
	atomic_fetch_add(&dp->keypairs_freed, 1);
	crypto_pool_keypairs_freed(dp->crypto);
	/* Keys must not linger in freed memory. */
	OPENSSL_cleanse(kp, sizeof(*kp));
	free(kp);
}

int keypair_slot(const struct keypair *kp)
{
	for (int s = 0; s < 3; s++)
		if (kp->peer->keypairs[s] == kp)
			return s;
	return -1;
}

int keypair_usable_for_send(const struct keypair *kp, uint64_t now)
{
	if (!kp)
		return -ENOKEY;
	if (age_ns(now, kp->birth_ns) >= (int64_t)REJECT_AFTER_TIME_NS ||
	    atomic_load_explicit(&kp->send_counter, memory_order_relaxed) >= REJECT_AFTER_MESSAGES)
		return -EKEYEXPIRED;
	return 0;
}

void peer_copy_endpoint(struct peer *p, struct sockaddr_storage *out, socklen_t *len)
{
	pthread_mutex_lock(&p->endpoint_lock);
	memcpy(out, &p->endpoint, sizeof(*out));
	*len = p->endpoint_len;
	pthread_mutex_unlock(&p->endpoint_lock);
}

static void peer_free(dp_t *dp, struct peer *p)
{
	for (int s = 0; s < 3; s++)
		keypair_free(dp, p->keypairs[s]);
	pthread_mutex_destroy(&p->endpoint_lock);
	staged_free(p);
	free(p->allowed_macs);
	free(p->prefixes);
	free(p->reported);
	free(p);
}

void peers_free_all(dp_t *dp)
{
	for (int i = 0; i < dp->npeers; i++)
		peer_free(dp, dp->peer_list[i]);
	free(dp->peer_list);
	dp->peer_list = NULL;
	dp->npeers = dp->peer_cap = 0;
	memset(dp->peer_hash, 0, sizeof(dp->peer_hash));
}

int dp_peer_add(dp_t *dp, uint32_t peer_id)
{
	int ret = 0;
	pthread_rwlock_wrlock(&dp->lock);
	if (peer_lookup(dp, peer_id)) {
		ret = -EEXIST;
		goto out;
	}
	if (dp->npeers == dp->peer_cap) {
		int cap = dp->peer_cap ? 2 * dp->peer_cap : 16;
		struct peer **l = realloc(dp->peer_list, cap * sizeof(*l));
		if (!l) {
			ret = -ENOMEM;
			goto out;
		}
		dp->peer_list = l;
		dp->peer_cap = cap;
	}
	struct peer *p = calloc(1, sizeof(*p));
	if (!p) {
		ret = -ENOMEM;
		goto out;
	}
	p->id = peer_id;
	pthread_mutex_init(&p->endpoint_lock, NULL);
	staged_init(p);
	unsigned b = peer_bucket(peer_id);
	p->hash_next = dp->peer_hash[b];
	dp->peer_hash[b] = p;
	dp->peer_list[dp->npeers++] = p;
out:
	pthread_rwlock_unlock(&dp->lock);
	return ret;
}

int dp_peer_remove(dp_t *dp, uint32_t peer_id)
{
	pthread_rwlock_wrlock(&dp->lock);
	struct peer **pp = &dp->peer_hash[peer_bucket(peer_id)];
	while (*pp && (*pp)->id != peer_id)
		pp = &(*pp)->hash_next;
	struct peer *p = *pp;
	if (!p) {
		pthread_rwlock_unlock(&dp->lock);
		return -ENOENT;
	}
	*pp = p->hash_next;
	for (int i = 0; i < dp->npeers; i++) {
		if (dp->peer_list[i] == p) {
			dp->peer_list[i] = dp->peer_list[--dp->npeers];
			break;
		}
	}
	allowedips_remove_peer(dp, p);
	peer_free(dp, p);
	pthread_rwlock_unlock(&dp->lock);
	mac_forget_peer(dp, peer_id);
	return 0;
}

int dp_peer_set_endpoint(dp_t *dp, uint32_t peer_id, const struct sockaddr *sa, socklen_t len)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	memset(&ss, 0, sizeof(ss));
	if (!sa)
		return -EINVAL;
	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		if (dp->udp_family == AF_INET6) {
			/* A dual-stack socket sends to IPv4 through ::ffff:a.b.c.d. */
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
			s6->sin6_family = AF_INET6;
			s6->sin6_port = sin->sin_port;
			s6->sin6_addr.s6_addr[10] = 0xff;
			s6->sin6_addr.s6_addr[11] = 0xff;
			memcpy(&s6->sin6_addr.s6_addr[12], &sin->sin_addr, 4);
			sslen = sizeof(*s6);
		} else {
			memcpy(&ss, sin, sizeof(*sin));
			sslen = sizeof(*sin);
		}
	} else if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		if (dp->udp_family != AF_INET6)
			return -EAFNOSUPPORT;
		memcpy(&ss, sa, sizeof(struct sockaddr_in6));
		sslen = sizeof(struct sockaddr_in6);
	} else {
		return -EINVAL;
	}
	pthread_rwlock_rdlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	if (p) {
		pthread_mutex_lock(&p->endpoint_lock);
		memcpy(&p->endpoint, &ss, sizeof(ss));
		p->endpoint_len = sslen;
		pthread_mutex_unlock(&p->endpoint_lock);
	}
	pthread_rwlock_unlock(&dp->lock);
	return p ? 0 : -ENOENT;
}

int dp_allowed_ips_set(dp_t *dp, uint32_t peer_id, const struct dp_prefix *prefixes, size_t n)
{
	if (n && !prefixes)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		int family = prefixes[i].family;
		if ((family != AF_INET && family != AF_INET6) ||
		    prefixes[i].cidr > (family == AF_INET ? 32 : 128))
			return -EINVAL;
	}
	struct dp_prefix *copy = NULL;
	if (n && !(copy = malloc(n * sizeof(*copy))))
		return -ENOMEM;
	if (n)
		memcpy(copy, prefixes, n * sizeof(*copy));
	pthread_rwlock_wrlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	int ret = p ? 0 : -ENOENT;
	if (p) {
		allowedips_remove_peer(dp, p);
		/* Kept whole even if an insert fails: removing one it does not hold
		 * does nothing. */
		p->prefixes = copy;
		p->n_prefixes = n;
		for (size_t i = 0; i < n && !ret; i++)
			ret = allowedips_insert(dp, prefixes[i].family, prefixes[i].addr,
						prefixes[i].cidr, p);
	} else {
		free(copy);
	}
	pthread_rwlock_unlock(&dp->lock);
	return ret;
}

static struct keypair *keypair_new(struct peer *p, uint32_t local_index, uint32_t remote_index,
				   const uint8_t send_key[32], const uint8_t recv_key[32])
{
	static _Atomic uint64_t next_key_id = 1;
	struct keypair *kp = calloc(1, sizeof(*kp));
	if (!kp)
		return NULL;
	kp->peer = p;
	kp->local_index = local_index;
	kp->remote_index = remote_index;
	kp->birth_ns = now_ns();
	atomic_init(&kp->send_counter, 0);
	pthread_mutex_init(&kp->replay_lock, NULL);
	replay_init(&kp->replay);
	kp->key_id = atomic_fetch_add(&next_key_id, 1);
	memcpy(kp->send_key, send_key, 32);
	memcpy(kp->recv_key, recv_key, 32);
	return kp;
}

/* Lock held for writing.  Fails if local_index belongs to another keypair
 * (Python draws unique indices; a clash is a caller bug worth reporting). */
static int keypair_create(dp_t *dp, struct peer *p, uint32_t local_index, uint32_t remote_index,
			  const uint8_t send_key[32], const uint8_t recv_key[32],
			  struct keypair **out)
{
	if (!send_key || !recv_key)
		return -EINVAL;
	if (index_lookup(dp, local_index))
		return -EEXIST;
	struct keypair *kp = keypair_new(p, local_index, remote_index, send_key, recv_key);
	if (!kp)
		return -ENOMEM;
	unsigned b = index_bucket(local_index);
	kp->index_next = dp->index_hash[b];
	dp->index_hash[b] = kp;
	*out = kp;
	return 0;
}

static int valid_slot(int slot)
{
	return slot == DP_CURRENT || slot == DP_PREVIOUS || slot == DP_NEXT;
}

int dp_keypair_clear(dp_t *dp, uint32_t peer_id, int slot)
{
	if (!valid_slot(slot))
		return -EINVAL;
	pthread_rwlock_wrlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	if (p) {
		keypair_free(dp, p->keypairs[slot]);
		p->keypairs[slot] = NULL;
		STAT_SET(p->key_wanted, false); /* a packet staged from now on asks anew */
	}
	pthread_rwlock_unlock(&dp->lock);
	return p ? 0 : -ENOENT;
}

int dp_keypair_install(dp_t *dp, uint32_t peer_id, int initiator, uint32_t local_index,
		       uint32_t remote_index, const uint8_t send_key[32], const uint8_t recv_key[32])
{
	pthread_rwlock_wrlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	struct keypair *kp = NULL;
	int ret = p ? 0 : -ENOENT;
	/* A send key this peer holds already would count its nonces from 0 again. */
	for (int s = 0; p && s < 3; s++)
		if (p->keypairs[s] && !CRYPTO_memcmp(p->keypairs[s]->send_key, send_key, 32))
			ret = -EKEYREJECTED;
	if (!ret)
		ret = keypair_create(dp, p, local_index, remote_index, send_key, recv_key, &kp);
	if (!ret) {
		struct keypair **k = p->keypairs;
		if (initiator) {
			/* noise.c add_new_keypair(), initiator branch. */
			keypair_free(dp, k[DP_PREVIOUS]);
			if (k[DP_NEXT]) {
				k[DP_PREVIOUS] = k[DP_NEXT];
				k[DP_NEXT] = NULL;
				keypair_free(dp, k[DP_CURRENT]);
			} else {
				k[DP_PREVIOUS] = k[DP_CURRENT];
			}
			k[DP_CURRENT] = kp;
		} else {
			/* Responder: usable only once the initiator proves it has
			 * it by sending on it (see peer_confirm_next). */
			keypair_free(dp, k[DP_NEXT]);
			k[DP_NEXT] = kp;
			keypair_free(dp, k[DP_PREVIOUS]);
			k[DP_PREVIOUS] = NULL;
		}
		/* Python answered: a packet staged from now on asks anew. */
		STAT_SET(p->key_wanted, false);
	}
	pthread_rwlock_unlock(&dp->lock);
	return ret;
}

bool peer_confirm_next(dp_t *dp, uint32_t peer_id, uint32_t local_index)
{
	bool rotated = false;
	pthread_rwlock_wrlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	if (p && p->keypairs[DP_NEXT] && p->keypairs[DP_NEXT]->local_index == local_index) {
		/* noise.c received_with_keypair(): previous := current,
		 * current := next, next := none. */
		keypair_free(dp, p->keypairs[DP_PREVIOUS]);
		p->keypairs[DP_PREVIOUS] = p->keypairs[DP_CURRENT];
		p->keypairs[DP_CURRENT] = p->keypairs[DP_NEXT];
		p->keypairs[DP_NEXT] = NULL;
		rotated = true;
	}
	pthread_rwlock_unlock(&dp->lock);
	return rotated;
}

static void peer_fill_stats(struct peer *p, struct dp_peer_stats *out, uint64_t now)
{
	memset(out, 0, sizeof(*out));
	out->rx_bytes = STAT_GET(p->rx_bytes);
	out->tx_bytes = STAT_GET(p->tx_bytes);
	out->rx_packets = STAT_GET(p->rx_packets);
	out->tx_packets = STAT_GET(p->tx_packets);
	out->rx_data_packets = STAT_GET(p->rx_data_packets);
	out->last_tx_ns = STAT_GET(p->last_tx_ns);
	out->last_tx_data_ns = STAT_GET(p->last_tx_data_ns);
	out->last_rx_ns = STAT_GET(p->last_rx_ns);
	out->last_rx_data_ns = STAT_GET(p->last_rx_data_ns);
	struct keypair *cur = p->keypairs[DP_CURRENT];
	if (cur) {
		out->has_current = 1;
		out->current_local_index = cur->local_index;
		out->current_send_counter = STAT_GET(cur->send_counter);
		out->current_age_ns = now - cur->birth_ns;
	}
	out->has_previous = p->keypairs[DP_PREVIOUS] != NULL;
	out->has_next = p->keypairs[DP_NEXT] != NULL;
	if (out->has_previous)
		out->previous_local_index = p->keypairs[DP_PREVIOUS]->local_index;
	if (out->has_next)
		out->next_local_index = p->keypairs[DP_NEXT]->local_index;
	socklen_t l;
	peer_copy_endpoint(p, &out->endpoint, &l);
	out->endpoint_len = l;
	out->drop_bad_tag = STAT_GET(p->drop_bad_tag);
	out->drop_replay = STAT_GET(p->drop_replay);
	out->drop_bad_source = STAT_GET(p->drop_bad_source);
	out->drop_no_keypair = STAT_GET(p->drop_no_keypair);
	out->drop_expired_keypair = STAT_GET(p->drop_expired_keypair);
	out->drop_malformed = STAT_GET(p->drop_malformed);
	out->staged_packets = STAT_GET(p->staged_count);
	out->staged_overflow = STAT_GET(p->staged_overflow);
}

int dp_peer_stats(dp_t *dp, uint32_t peer_id, struct dp_peer_stats *out)
{
	memset(out, 0, sizeof(*out));
	pthread_rwlock_rdlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	if (p)
		peer_fill_stats(p, out, now_ns());
	pthread_rwlock_unlock(&dp->lock);
	return p ? 0 : -ENOENT;
}

/* Whether a peer's stats differ from what was last reported, the age of CURRENT
 * aside (it always moves; what Python follows is the keypair's index). */
static bool stats_changed(const struct dp_peer_stats *now, const struct dp_peer_stats *before)
{
	static const struct dp_peer_stats zero;
	struct dp_peer_stats a;
	memcpy(&a, now, sizeof(a)); /* padding too: fill_stats zeroed it */
	a.current_age_ns = 0;
	return memcmp(&a, before ? before : &zero, sizeof(a)) != 0;
}

int dp_changed_peer_stats(dp_t *dp, uint32_t *ids, struct dp_peer_stats *out, size_t max)
{
	size_t n = 0;
	uint64_t now = now_ns();
	pthread_mutex_lock(&dp->report_lock);
	pthread_rwlock_rdlock(&dp->lock);
	for (int i = 0; i < dp->npeers && n < max; i++) {
		struct peer *p = dp->peer_list[i];
		peer_fill_stats(p, &out[n], now);
		if (!stats_changed(&out[n], p->reported))
			continue;
		if (!p->reported && !(p->reported = malloc(sizeof(*p->reported))))
			break; /* reported again next time */
		memcpy(p->reported, &out[n], sizeof(*p->reported));
		p->reported->current_age_ns = 0;
		ids[n++] = p->id;
	}
	pthread_rwlock_unlock(&dp->lock);
	pthread_mutex_unlock(&dp->report_lock);
	return (int)n;
}

int dp_peer_set_allowed_macs(dp_t *dp, uint32_t peer_id, const uint8_t *macs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (macs[6 * i] & 1)
			return -EINVAL; /* a group address is nobody's source */
	uint8_t(*copy)[6] = NULL;
	if (n && !(copy = malloc(6 * n)))
		return -ENOMEM;
	if (n)
		memcpy(copy, macs, 6 * n);
	pthread_rwlock_wrlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	if (p) {
		free(p->allowed_macs);
		p->allowed_macs = copy;
		p->n_allowed_macs = n;
		mac_bind_peer(dp, p);
	}
	pthread_rwlock_unlock(&dp->lock);
	if (!p)
		free(copy);
	return p ? 0 : -ENOENT;
}
