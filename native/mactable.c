/* SPDX-License-Identifier: MIT
 *
 * mactable.c -- tap mode's learning switch: source MAC -> peer.
 *
 * Learned only from frames that authenticated from that peer, consulted for
 * every frame read from the device, aged out after dp->mac_ageing_ns like a
 * Linux bridge (default 300 s).  A MAC address held by one peer is not taken
 * by another while its entry is fresh: else any peer could claim the address
 * of a host behind another and have its unicast (tunnel/core/l2.py does the
 * same, and tests/planes/test_native_agreement.py holds the two to the same
 * answers).
 *
 * A peer's allowed_macs are bound entries: configuration, never aged, never
 * taken.  An address the configuration no longer gives a peer is not its any
 * more: dropped from its allowed_macs, the entry goes at once, free for
 * whoever sends from it next.  Bound entries do not count toward
 * MAC_TABLE_MAX: the cap bounds what peers' frames can make the table grow
 * by, and the configuration is bounded already (an address bound to one
 * peer); counted, a long allowed_macs list would leave no room to learn, and
 * binding could not be refused without failing a reload.
 *
 * At most MAC_TABLE_MAX learned entries: a new address beyond them is not
 * learned, so frames to it are flooded.  Full means that many live ones: an
 * expired entry anywhere makes room (prune_all).  Its own mutex: learning
 * happens on RX workers and lookups on TX workers, neither needs the peer
 * table write lock.  Entries hold peer ids, not pointers, so peer removal
 * needs no coordination beyond mac_forget_peer().
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
	return !e->bound && age_ns(now, e->seen_ns) >= (int64_t)atomic_load(&dp->mac_ageing_ns);
}

static bool listed(const struct peer *p, const uint8_t mac[6])
{
	for (size_t i = 0; i < p->n_allowed_macs; i++)
		if (!memcmp(p->allowed_macs[i], mac, 6))
			return true;
	return false;
}

bool peer_allows_mac(const struct peer *p, const uint8_t mac[6])
{
	return !p->n_allowed_macs || listed(p, mac);
}

static struct mac_entry *entry_of(dp_t *dp, const uint8_t mac[6]) /* mac_lock held */
{
	struct mac_entry *e = dp->mac_hash[mac_bucket(mac)];
	while (e && memcmp(e->mac, mac, 6))
		e = e->next;
	return e;
}

static void drop(dp_t *dp, struct mac_entry **pp) /* mac_lock held */
{
	struct mac_entry *e = *pp;
	*pp = e->next;
	if (!e->bound)
		dp->mac_learned--;
	free(e);
}

/* Every expired entry goes.  Until the earliest of the rest expires none can
 * (a refresh only postpones an expiry, a new entry expires later still), so a
 * table full of fresh entries is not walked again for every new address. */
static void prune_all(dp_t *dp, uint64_t now) /* mac_lock held */
{
	uint64_t ageing = atomic_load(&dp->mac_ageing_ns), due = UINT64_MAX;
	for (int b = 0; b < MAC_HASH_SIZE; b++) {
		struct mac_entry **pp = &dp->mac_hash[b], *e;
		while ((e = *pp)) {
			if (expired(dp, e, now)) {
				drop(dp, pp);
				continue;
			}
			if (!e->bound && e->seen_ns + ageing < due)
				due = e->seen_ns + ageing;
			pp = &e->next;
		}
	}
	dp->mac_prune_due_ns = due;
}

void mac_bind_peer(dp_t *dp, const struct peer *p)
{
	pthread_mutex_lock(&dp->mac_lock);
	/* What the peer may no longer send from is no longer its: a MAC dropped
	 * from its allowed_macs, and, with a list, any it had learned off it. */
	for (int b = 0; b < MAC_HASH_SIZE; b++) {
		struct mac_entry **pp = &dp->mac_hash[b], *e;
		while ((e = *pp)) {
			if (e->peer_id == p->id && (e->bound || p->n_allowed_macs) &&
			    !listed(p, e->mac))
				drop(dp, pp);
			else
				pp = &e->next;
		}
	}
	for (size_t i = 0; i < p->n_allowed_macs; i++) {
		struct mac_entry *e = entry_of(dp, p->allowed_macs[i]);
		if (!e && (e = calloc(1, sizeof(*e)))) {
			memcpy(e->mac, p->allowed_macs[i], 6);
			e->next = dp->mac_hash[mac_bucket(e->mac)];
			dp->mac_hash[mac_bucket(e->mac)] = e;
		} else if (e && !e->bound) {
			dp->mac_learned--; /* taken from whoever had learned it */
		}
		if (e) {
			e->peer_id = p->id;
			e->bound = true;
		}
	}
	pthread_mutex_unlock(&dp->mac_lock);
}

int mac_learn(dp_t *dp, const uint8_t mac[6], uint32_t peer_id, uint64_t now)
{
	if (mac[0] & 1)
		return DP_MAC_LEARNED; /* a group address is never a source: nothing to learn */
	int result = DP_MAC_LEARNED;
	pthread_mutex_lock(&dp->mac_lock);
	struct mac_entry **pp = &dp->mac_hash[mac_bucket(mac)], *e;
	while ((e = *pp)) {
		if (!memcmp(e->mac, mac, 6)) {
			if (e->peer_id != peer_id && !expired(dp, e, now))
				result = DP_MAC_HELD_BY_OTHER;
			else if (!e->bound) {
				e->peer_id = peer_id;
				e->seen_ns = now;
			}
			goto out;
		}
		if (expired(dp, e, now)) { /* prune as we walk */
			drop(dp, pp);
			continue;
		}
		pp = &e->next;
	}
	if (dp->mac_learned >= MAC_TABLE_MAX && now >= dp->mac_prune_due_ns)
		prune_all(dp, now);
	if (dp->mac_learned < MAC_TABLE_MAX && (e = malloc(sizeof(*e)))) {
		memcpy(e->mac, mac, 6);
		e->peer_id = peer_id;
		e->seen_ns = now;
		e->bound = false;
		e->next = dp->mac_hash[mac_bucket(mac)];
		dp->mac_hash[mac_bucket(mac)] = e;
		dp->mac_learned++;
	} else
		result = DP_MAC_TABLE_FULL;
out:
	pthread_mutex_unlock(&dp->mac_lock);
	return result;
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
			if (e->peer_id == peer_id)
				drop(dp, pp);
			else
				pp = &e->next;
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
	dp->mac_learned = 0;
}

int mac_table_at(dp_t *dp, uint64_t now, struct dp_mac_entry *out, int max)
{
	int n = 0;
	pthread_mutex_lock(&dp->mac_lock);
	for (int b = 0; b < MAC_HASH_SIZE && n < max; b++) {
		for (struct mac_entry *e = dp->mac_hash[b]; e && n < max; e = e->next) {
			if (e->bound || expired(dp, e, now))
				continue; /* allowed_macs are listed as such, not as learned */
			memset(&out[n], 0, sizeof(out[n]));
			memcpy(out[n].mac, e->mac, 6);
			out[n].peer_id = e->peer_id;
			int64_t age = age_ns(now, e->seen_ns);
			out[n].age_ms = age > 0 ? (uint64_t)age / 1000000ULL : 0;
			n++;
		}
	}
	pthread_mutex_unlock(&dp->mac_lock);
	return n;
}

int dp_mac_table(dp_t *dp, struct dp_mac_entry *out, int max)
{
	return mac_table_at(dp, now_ns(), out, max);
}

int dp_mac_owner(dp_t *dp, const uint8_t mac[6], uint32_t *peer_id)
{
	return mac_lookup(dp, mac, now_ns(), peer_id);
}

void dp_set_mac_ageing(dp_t *dp, uint32_t seconds)
{
	pthread_mutex_lock(&dp->mac_lock);
	atomic_store(&dp->mac_ageing_ns, (uint64_t)seconds * 1000000000ULL);
	dp->mac_prune_due_ns = 0; /* a shorter ageing brings every expiry forward */
	pthread_mutex_unlock(&dp->mac_lock);
}
