/* SPDX-License-Identifier: MIT
 *
 * pipeline.h -- parallel crypto with per-peer order (docs/internals.md, "Many
 * cores").  An I/O worker makes a slot for every packet of a batch, in the
 * order it read them, in its ring; slices of slots go round robin to the
 * crypto workers' queues (a batch's last, shorter slice the I/O worker seals
 * or opens itself); a crypto worker seals or opens a slice and marks each slot
 * done (a release store); the I/O worker takes slots off the
 * ring's head only once the head is done, so every peer's packets leave in
 * the order they came, whichever worker finished first.
 *
 * What the I/O worker does before a slot is made (routing, the send counter,
 * the header) and after it is released (the replay window, cryptokey
 * routing, sending, coalescing) stays its own: the crypto workers touch
 * nothing but the slot's bytes and their own AEAD contexts.  The I/O worker
 * holds dp->lock (read) from making a batch's slots to releasing them, so no
 * keypair a slot names is freed meanwhile; a crypto worker forgets the keys
 * its contexts hold once keypairs were freed, woken for it if idle.
 */
#ifndef PYVPN_PIPELINE_H
#define PYVPN_PIPELINE_H

#include "internal.h"

#define CRYPTO_SLICE 16        /* slots per job on a crypto queue */
#define CRYPTO_QUEUE_SLICES 256 /* a queue's room; a full queue makes its poster wait */

enum { CRYPTO_SEAL, CRYPTO_OPEN };
enum { SLOT_PENDING, SLOT_DONE, SLOT_FAILED };

/* One packet's crypto.  Seal: len bytes at `in`, pad zeros after them, into
 * out (len + pad + 16).  Open: len bytes at `in`, tag included, into out.
 * kp, src and msg are the I/O worker's, for when it releases the slot. */
struct crypto_slot {
	const uint8_t *key;
	uint64_t key_id;
	uint64_t counter;
	const uint8_t *in;
	uint8_t *out;
	uint32_t len;
	uint8_t pad, op;
	_Atomic uint8_t state;
	struct keypair *kp;
	const struct sockaddr_storage *src;
	uint32_t msg;
};

struct crypto_pool;

/* An I/O worker's slots of one direction, in read order: made at the tail,
 * released from the head. */
struct crypto_ring {
	struct crypto_pool *pool;
	struct aead *own; /* the I/O worker's, of the ring's direction; NULL: post all */
	struct crypto_slot *slots;
	int cap;
	int made, posted, released;
	unsigned next_queue; /* round robin over the pool's queues, per slice */
	_Atomic int inflight; /* slices posted and not yet notified */
	pthread_mutex_t lock;
	pthread_cond_t done; /* a slice is done (a crypto worker to the I/O worker) */
	bool waiting;        /* under lock: someone sleeps on `done` */
};

/* n crypto workers (1..MAX_CRYPTO_WORKERS) that forget their keys when
 * *keypairs_freed moves.  NULL: out of memory or threads. */
struct crypto_pool *crypto_pool_start(int n, _Atomic uint64_t *keypairs_freed);
void crypto_pool_stop(struct crypto_pool *); /* joins; NULL is fine */
/* *keypairs_freed moved: idle workers wake to forget their keys now.  NULL is
 * fine. */
void crypto_pool_keypairs_freed(struct crypto_pool *);
int crypto_pool_size(const struct crypto_pool *);
/* How many of the workers' AEAD contexts hold a key (racy: for tests). */
int crypto_pool_cached_keys(struct crypto_pool *);

/* own: the I/O worker's context of the ring's direction, for a batch's last
 * short slice (NULL: everything goes to the workers).  0 or -ENOMEM. */
int crypto_ring_init(struct crypto_ring *, struct crypto_pool *, int cap, struct aead *own);
void crypto_ring_free(struct crypto_ring *);
static inline bool crypto_ring_full(const struct crypto_ring *r)
{
	return r->made == r->cap;
}
/* Append a copy of *s (not full: crypto_ring_full), pending; a slice's worth
 * goes to a queue at once. */
void crypto_ring_push(struct crypto_ring *, const struct crypto_slot *s);
/* The head slot once it is done (posting what is not yet), or NULL: every
 * slot made is released, and the ring is empty again. */
struct crypto_slot *crypto_ring_next(struct crypto_ring *);

#endif
