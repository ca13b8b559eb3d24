/* SPDX-License-Identifier: MIT
 *
 * allowedips.c -- cryptokey routing (whitepaper section 2): a longest-prefix
 * match from an inner IP address to the peer that owns it.
 *
 * A plain binary trie, one bit per level, one per family.  Lookups are at
 * most 32/128 pointer steps, which is cheap next to a ChaCha20 pass; the
 * kernel's allowedips.c compresses paths, which we do not need at our peer
 * counts.  Like WireGuard, adding a prefix that another peer owns moves it.
 * Callers hold dp->lock (write for changes, read for lookups).
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>

#include "internal.h"

static inline int bit_at(const uint8_t *addr, int i)
{
	return (addr[i >> 3] >> (7 - (i & 7))) & 1;
}

int allowedips_insert(dp_t *dp, int family, const uint8_t *addr, uint8_t cidr, struct peer *peer)
{
	struct trie_node **root = family == AF_INET ? &dp->trie4 : &dp->trie6;
	if (!*root && !(*root = calloc(1, sizeof(**root))))
		return -ENOMEM;
	struct trie_node *n = *root;
	for (int i = 0; i < cidr; i++) {
		int b = bit_at(addr, i);
		if (!n->child[b] && !(n->child[b] = calloc(1, sizeof(*n))))
			return -ENOMEM;
		n = n->child[b];
	}
	n->peer = peer;
	return 0;
}

struct peer *allowedips_lookup(dp_t *dp, int family, const uint8_t *addr)
{
	struct trie_node *n = family == AF_INET ? dp->trie4 : dp->trie6;
	int bits = family == AF_INET ? 32 : 128;
	struct peer *best = NULL;
	for (int i = 0; n; i++) {
		if (n->peer)
			best = n->peer;
		if (i == bits)
			break;
		n = n->child[bit_at(addr, i)];
	}
	return best;
}

/* Returns true if the subtree is now empty (and was freed). */
static bool remove_peer(struct trie_node *n, struct peer *peer)
{
	if (!n)
		return true;
	if (n->peer == peer)
		n->peer = NULL;
	for (int b = 0; b < 2; b++)
		if (n->child[b] && remove_peer(n->child[b], peer))
			n->child[b] = NULL;
	if (!n->peer && !n->child[0] && !n->child[1]) {
		free(n);
		return true;
	}
	return false;
}

void allowedips_remove_peer(dp_t *dp, struct peer *peer)
{
	/* Recursion depth is bounded by the address width (128). */
	if (remove_peer(dp->trie4, peer))
		dp->trie4 = NULL;
	if (remove_peer(dp->trie6, peer))
		dp->trie6 = NULL;
}

static void free_all(struct trie_node *n)
{
	if (!n)
		return;
	free_all(n->child[0]);
	free_all(n->child[1]);
	free(n);
}

void allowedips_free(dp_t *dp)
{
	free_all(dp->trie4);
	free_all(dp->trie6);
	dp->trie4 = dp->trie6 = NULL;
}
