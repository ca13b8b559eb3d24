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

/* Take the prefix from the peer if it still holds it (another may have taken
 * it since), and free the nodes that leaves empty on its path. */
static void remove_prefix(struct trie_node **root, const struct dp_prefix *pf,
			  const struct peer *peer)
{
	struct trie_node *path[129];
	struct trie_node *n = *root;
	int depth = 0;
	for (; n && depth < pf->cidr; depth++) {
		path[depth] = n;
		n = n->child[bit_at(pf->addr, depth)];
	}
	if (!n || n->peer != peer)
		return;
	n->peer = NULL;
	while (!n->peer && !n->child[0] && !n->child[1]) {
		free(n);
		if (depth == 0) {
			*root = NULL;
			return;
		}
		n = path[--depth];
		n->child[bit_at(pf->addr, depth)] = NULL;
	}
}

void allowedips_remove_peer(dp_t *dp, struct peer *peer)
{
	for (size_t i = 0; i < peer->n_prefixes; i++) {
		const struct dp_prefix *pf = &peer->prefixes[i];
		remove_prefix(pf->family == AF_INET ? &dp->trie4 : &dp->trie6, pf, peer);
	}
	free(peer->prefixes);
	peer->prefixes = NULL;
	peer->n_prefixes = 0;
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
