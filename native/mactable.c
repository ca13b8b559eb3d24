/* SPDX-License-Identifier: MIT
 *
 * mactable.c -- tap mode's learning switch: source MAC -> peer.
 *
 * Learned only from frames that authenticated from that peer (so a peer
 * cannot claim another's MACs by forging), consulted for every frame read
 * from the device, aged out after dp->mac_ageing_ns like a Linux bridge
 * (default 300 s).  Its own mutex: learning happens on RX workers and
 * lookups on TX workers, neither needs the peer table write lock.  Entries
 * hold peer ids, not pointers, so peer removal needs no coordination beyond
 * mac_forget_peer().
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static inline unsigned mac_bucket(const uint8_t mac[6])
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (int i = 0; i < 6; i++)
		h = (h ^ mac[i]) * 16777619u;
	return h & (MAC_HASH_SIZE - 1);
}

static bool expired(dp_t *dp, const struct mac_entry *e, uint64_t now)
{
	return now - e->seen_ns >= atomic_load(&dp->mac_ageing_ns);
}

void mac_learn(dp_t *dp, const uint8_t mac[6], uint32_t peer_id, uint64_t now)
{
	if (mac[0] & 1)
		return; /* a group address is never a source */
	pthread_mutex_lock(&dp->mac_lock);
	struct mac_entry **pp = &dp->mac_hash[mac_bucket(mac)], *e;
	while ((e = *pp)) {
		if (!memcmp(e->mac, mac, 6)) {
			e->peer_id = peer_id;
			e->seen_ns = now;
			goto out;
		}
		if (expired(dp, e, now)) { /* prune as we walk */
			*pp = e->next;
			free(e);
			dp->mac_count--;
			continue;
		}
		pp = &e->next;
	}
	if (dp->mac_count < MAC_TABLE_MAX && (e = malloc(sizeof(*e)))) {
		memcpy(e->mac, mac, 6);
		e->peer_id = peer_id;
		e->seen_ns = now;
		e->next = dp->mac_hash[mac_bucket(mac)];
		dp->mac_hash[mac_bucket(mac)] = e;
		dp->mac_count++;
	}
out:
	pthread_mutex_unlock(&dp->mac_lock);
}

bool mac_lookup(dp_t *dp, const uint8_t mac[6], uint64_t now, uint32_t *peer_id)
{
	bool found = false;
	pthread_mutex_lock(&dp->mac_lock);
	for (struct mac_entry *e = dp->mac_hash[mac_bucket(mac)]; e; e = e->next) {
		if (!memcmp(e->mac, mac, 6)) {
			if (!expired(dp, e, now)) {
				*peer_id = e->peer_id;
				found = true;
			}
			break;
		}
	}
	pthread_mutex_unlock(&dp->mac_lock);
	return found;
}

void mac_forget_peer(dp_t *dp, uint32_t peer_id)
{
	pthread_mutex_lock(&dp->mac_lock);
	for (int b = 0; b < MAC_HASH_SIZE; b++) {
		struct mac_entry **pp = &dp->mac_hash[b], *e;
		while ((e = *pp)) {
			if (e->peer_id == peer_id) {
				*pp = e->next;
				free(e);
				dp->mac_count--;
			} else {
				pp = &e->next;
			}
		}
	}
	pthread_mutex_unlock(&dp->mac_lock);
}

void mac_free(dp_t *dp)
{
	for (int b = 0; b < MAC_HASH_SIZE; b++) {
		struct mac_entry *e = dp->mac_hash[b], *n;
		for (; e; e = n) {
			n = e->next;
			free(e);
		}
		dp->mac_hash[b] = NULL;
	}
	dp->mac_count = 0;
}

int dp_mac_table(dp_t *dp, struct dp_mac_entry *out, int max)
{
	int n = 0;
	uint64_t now = now_ns();
	pthread_mutex_lock(&dp->mac_lock);
	for (int b = 0; b < MAC_HASH_SIZE && n < max; b++) {
		for (struct mac_entry *e = dp->mac_hash[b]; e && n < max; e = e->next) {
			if (expired(dp, e, now))
				continue;
			memset(&out[n], 0, sizeof(out[n]));
			memcpy(out[n].mac, e->mac, 6);
			out[n].peer_id = e->peer_id;
			out[n].age_ms = (now - e->seen_ns) / 1000000ULL;
			n++;
		}
	}
	pthread_mutex_unlock(&dp->mac_lock);
	return n;
}

int dp_mac_owner(dp_t *dp, const uint8_t mac[6], uint32_t *peer_id)
{
	return mac_lookup(dp, mac, now_ns(), peer_id);
}

void dp_set_mac_ageing(dp_t *dp, uint32_t seconds)
{
	atomic_store(&dp->mac_ageing_ns, (uint64_t)seconds * 1000000000ULL);
}
