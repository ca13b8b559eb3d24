/* SPDX-License-Identifier: MIT
 *
 * testhooks.c -- the functions of testhooks.h: the tests' way to the plane's
 * insides (its AEAD and replay window alone, the switch and the allowed IPs at
 * a time of their choosing, a keypair's limits without sending 2^60
 * messages).  No data path calls them.
 *
 * They are built into the one module `pip install -e .` makes, not into a test
 * build of their own: the suite drives that installed module
 * (tunnel.planes._native, through tunnel/planes/dp.py), the very one the
 * tunnels it starts run on, and a second build of the plane for every run would
 * cost minutes the suite cannot spare.  A file of their own keeps them out of
 * the files the data path is read in.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>

#include "internal.h"
#include "pipeline.h"
#include "testhooks.h"

/* The data path's AEAD, each call with a fresh context. */
int dp_test_aead_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
		      size_t aad_len, const uint8_t *pt, size_t len, uint8_t *out)
{
	struct aead a;
	if (aead_init(&a, 1))
		return -1;
	int r = aead_seal(&a, key, 0, nonce, aad, aad_len, pt, len, 0, out);
	aead_free(&a);
	return r;
}

int dp_test_aead_open(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
		      size_t aad_len, const uint8_t *ct, size_t len, uint8_t *out)
{
	struct aead a;
	if (aead_init(&a, 0))
		return -1;
	int r = aead_open(&a, key, 0, nonce, aad, aad_len, ct, len, out);
	aead_free(&a);
	return r;
}

dp_replay_t *dp_test_replay_new(void)
{
	dp_replay_t *r = malloc(sizeof(*r));
	if (r)
		replay_init(r);
	return r;
}

int dp_test_replay_check(dp_replay_t *r, uint64_t counter)
{
	return replay_validate(r, counter) ? 1 : 0;
}

void dp_test_replay_free(dp_replay_t *r)
{
	free(r);
}

uint64_t dp_test_replay_window_size(void)
{
	return COUNTER_WINDOW_SIZE;
}

int dp_test_cached_keys(dp_t *dp)
{
	int n = 0;
	for (int i = 0; i < dp->nworkers; i++)
		n += (tx_aead(dp->workers[i].tx)->key_id != 0) +
		     (rx_aead(dp->workers[i].rx)->key_id != 0);
	return n + crypto_pool_cached_keys(dp->crypto);
}

int dp_test_usable_at(dp_t *dp, uint32_t peer_id, int64_t offset_ns)
{
	pthread_rwlock_rdlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	struct keypair *kp = p ? p->keypairs[DP_CURRENT] : NULL;
	int ret = keypair_usable_for_send(kp, kp ? kp->birth_ns + (uint64_t)offset_ns : 0);
	pthread_rwlock_unlock(&dp->lock);
	return ret;
}

int dp_test_set_send_counter(dp_t *dp, uint32_t peer_id, uint64_t counter)
{
	pthread_rwlock_rdlock(&dp->lock);
	struct peer *p = peer_lookup(dp, peer_id);
	struct keypair *kp = p ? p->keypairs[DP_CURRENT] : NULL;
	if (kp)
		atomic_store_explicit(&kp->send_counter, counter, memory_order_relaxed);
	pthread_rwlock_unlock(&dp->lock);
	return kp ? 0 : -ENOKEY;
}

int dp_test_mac_learn(dp_t *dp, const uint8_t mac[6], uint32_t peer_id, uint64_t now)
{
	return mac_learn(dp, mac, peer_id, now);
}

int dp_test_mac_owner_at(dp_t *dp, const uint8_t mac[6], uint64_t now, uint32_t *peer_id)
{
	return mac_lookup(dp, mac, now, peer_id);
}

int dp_test_mac_table_at(dp_t *dp, uint64_t now, struct dp_mac_entry *out, int max)
{
	return mac_table_at(dp, now, out, max);
}

int dp_test_allowed_ips_lookup(dp_t *dp, int family, const uint8_t *addr, uint32_t *peer_id)
{
	if (family != AF_INET && family != AF_INET6)
		return -EINVAL;
	pthread_rwlock_rdlock(&dp->lock);
	struct peer *p = allowedips_lookup(dp, family, addr);
	if (p)
		*peer_id = p->id;
	pthread_rwlock_unlock(&dp->lock);
	return p != NULL;
}

int dp_test_consume_initiation(const uint8_t private_key[32], const uint8_t chaining_key[32],
			       const uint8_t hash[32], const uint8_t msg[148],
			       const uint8_t ephemeral_private[32],
			       struct dp_consumed_initiation *out)
{
	return handshake_consume_once(private_key, chaining_key, hash, msg, ephemeral_private, out);
}
