/* SPDX-License-Identifier: MIT
 *
 * pipeline.c -- the crypto workers, their queues, and the I/O workers' rings
 * of slots (pipeline.h says how they fit; drivers/net/wireguard/queueing.h is
 * the kernel's form of the same idea).
 *
 * Every hand-over is under a mutex: an I/O worker posts a slice of 16 slots
 * at a time, so a lock per slice costs little beside 16 seals, and a sleeping
 * thread is always woken by whoever changed what it waits for.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline.h"

struct crypto_slice {
	struct crypto_ring *ring;
	int first, n;
};

/* One crypto worker and the slices waiting for it. */
struct crypto_queue {
	struct crypto_pool *pool;
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;
	pthread_cond_t work, room;
	struct crypto_slice slices[CRYPTO_QUEUE_SLICES];
	unsigned head, tail; /* tail - head slices wait */
	struct aead seal, open;
	uint64_t freed_seen;
};

struct crypto_pool {
	int n;
	bool stopping; /* under each queue's lock */
	_Atomic uint64_t *keypairs_freed;
	struct crypto_queue queues[];
};

static inline bool slot_done(const struct crypto_slot *s)
{
	return atomic_load_explicit(&s->state, memory_order_acquire) != SLOT_PENDING;
}

/* --- The crypto workers -------------------------------------------------- */

/* Keypairs went (peer.c keypair_free): overwrite the keys the contexts hold,
 * so that zeroing a keypair reaches every copy of its keys. */
static void forget_freed_keys(struct crypto_queue *q)
{
	uint64_t freed = atomic_load(q->pool->keypairs_freed);
	if (freed != q->freed_seen) {
		q->freed_seen = freed;
		aead_forget(&q->seal);
		aead_forget(&q->open);
	}
}

/* The next slice, waiting for one; false: the pool stops and nothing is left.
 * Freed keys are forgotten first, and an idle worker is woken to forget them
 * (crypto_pool_keypairs_freed). */
static bool queue_pop(struct crypto_queue *q, struct crypto_slice *out)
{
	pthread_mutex_lock(&q->lock);
	for (;;) {
		forget_freed_keys(q);
		if (q->head != q->tail || q->pool->stopping)
			break;
		pthread_cond_wait(&q->work, &q->lock);
	}
	bool got = q->head != q->tail;
	if (got) {
		*out = q->slices[q->head++ % CRYPTO_QUEUE_SLICES];
		pthread_cond_signal(&q->room);
	}
	pthread_mutex_unlock(&q->lock);
	return got;
}

/* Seal or open the slot under a, a context of the slot's direction. */
static void slot_run(struct aead *a, struct crypto_slot *s)
{
	uint8_t nonce[12];
	aead_nonce(nonce, s->counter);
	int err = s->op == CRYPTO_SEAL
			  ? aead_seal(a, s->key, s->key_id, nonce, NULL, 0, s->in, s->len, s->pad, s->out)
			  : aead_open(a, s->key, s->key_id, nonce, NULL, 0, s->in, s->len, s->out);
	atomic_store_explicit(&s->state, err ? SLOT_FAILED : SLOT_DONE, memory_order_release);
}

/* A slice is done: if it was the ring's last in flight, its I/O worker may be
 * waiting for it.  The last this worker touches of the ring (crypto_ring_free
 * waits for it). */
static void ring_notify(struct crypto_ring *r)
{
	pthread_mutex_lock(&r->lock);
	if (atomic_fetch_sub(&r->inflight, 1) == 1 && r->waiting)
		pthread_cond_signal(&r->done);
	pthread_mutex_unlock(&r->lock);
}

static void *crypto_main(void *arg)
{
	struct crypto_queue *q = arg;
	struct crypto_slice s;
	while (queue_pop(q, &s)) {
		for (int i = 0; i < s.n; i++) {
			struct crypto_slot *slot = &s.ring->slots[s.first + i];
			slot_run(slot->op == CRYPTO_SEAL ? &q->seal : &q->open, slot);
		}
		ring_notify(s.ring);
	}
	return NULL;
}

/* --- The pool ------------------------------------------------------------ */

static int queue_init(struct crypto_pool *pool, struct crypto_queue *q)
{
	q->pool = pool;
	q->freed_seen = atomic_load(pool->keypairs_freed);
	pthread_cond_init(&q->work, NULL);
	pthread_cond_init(&q->room, NULL);
	pthread_mutex_init(&q->lock, NULL);
	if (aead_init(&q->seal, 1) | aead_init(&q->open, 0))
		return -ENOMEM;
	int err = thread_spawn(&q->thread, crypto_main, q);
	q->started = !err;
	return err;
}

struct crypto_pool *crypto_pool_start(int n, _Atomic uint64_t *keypairs_freed)
{
	if (n < 1 || n > MAX_CRYPTO_WORKERS)
		return NULL;
	struct crypto_pool *pool = calloc(1, sizeof(*pool) + n * sizeof(pool->queues[0]));
	if (!pool)
		return NULL;
	pool->keypairs_freed = keypairs_freed;
	for (int i = 0; i < n; i++) {
		pool->n = i + 1; /* what crypto_pool_stop undoes */
		if (queue_init(pool, &pool->queues[i])) {
			crypto_pool_stop(pool);
			return NULL;
		}
	}
	return pool;
}

void crypto_pool_stop(struct crypto_pool *pool)
{
	if (!pool)
		return;
	for (int i = 0; i < pool->n; i++) {
		struct crypto_queue *q = &pool->queues[i];
		pthread_mutex_lock(&q->lock);
		pool->stopping = true;
		pthread_cond_signal(&q->work);
		pthread_mutex_unlock(&q->lock);
	}
	for (int i = 0; i < pool->n; i++) {
		struct crypto_queue *q = &pool->queues[i];
		if (q->started)
			pthread_join(q->thread, NULL);
		aead_free(&q->seal);
		aead_free(&q->open);
		pthread_mutex_destroy(&q->lock);
		pthread_cond_destroy(&q->work);
		pthread_cond_destroy(&q->room);
	}
	free(pool);
}

void crypto_pool_keypairs_freed(struct crypto_pool *pool)
{
	for (int i = 0; i < crypto_pool_size(pool); i++) {
		struct crypto_queue *q = &pool->queues[i];
		pthread_mutex_lock(&q->lock); /* a worker between its check and its wait */
		pthread_cond_signal(&q->work);
		pthread_mutex_unlock(&q->lock);
	}
}

int crypto_pool_size(const struct crypto_pool *pool)
{
	return pool ? pool->n : 0;
}

int crypto_pool_cached_keys(struct crypto_pool *pool)
{
	int n = 0;
	for (int i = 0; i < crypto_pool_size(pool); i++)
		n += (pool->queues[i].seal.key_id != 0) + (pool->queues[i].open.key_id != 0);
	return n;
}

/* --- The rings ----------------------------------------------------------- */

int crypto_ring_init(struct crypto_ring *r, struct crypto_pool *pool, int cap, struct aead *own)
{
	memset(r, 0, sizeof(*r));
	r->pool = pool;
	r->cap = cap;
	r->own = own;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->done, NULL);
	r->slots = calloc(cap, sizeof(*r->slots));
	return r->slots ? 0 : -ENOMEM;
}

/* Sleep until every slice posted is done: once a batch, not once a slice,
 * which would take a core from the workers for a wakeup every few
 * microseconds.  The head is released as soon as it is done all the same
 * (crypto_ring_next), while the I/O worker is awake. */
static void ring_wait(struct crypto_ring *r)
{
	pthread_mutex_lock(&r->lock);
	r->waiting = true;
	while (atomic_load(&r->inflight))
		pthread_cond_wait(&r->done, &r->lock);
	r->waiting = false;
	pthread_mutex_unlock(&r->lock);
}

void crypto_ring_free(struct crypto_ring *r)
{
	ring_wait(r); /* a worker between its last slot and ring_notify */
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->done);
	free(r->slots);
	r->slots = NULL;
}

/* The slots made since the last post, as one slice on the next queue. */
static void ring_post(struct crypto_ring *r)
{
	struct crypto_pool *pool = r->pool;
	struct crypto_queue *q = &pool->queues[r->next_queue++ % (unsigned)pool->n];
	struct crypto_slice s = {r, r->posted, r->made - r->posted};
	r->posted = r->made;
	atomic_fetch_add(&r->inflight, 1);
	pthread_mutex_lock(&q->lock);
	while (q->tail - q->head == CRYPTO_QUEUE_SLICES)
		pthread_cond_wait(&q->room, &q->lock);
	q->slices[q->tail++ % CRYPTO_QUEUE_SLICES] = s;
	pthread_cond_signal(&q->work);
	pthread_mutex_unlock(&q->lock);
}

void crypto_ring_push(struct crypto_ring *r, const struct crypto_slot *s)
{
	struct crypto_slot *slot = &r->slots[r->made++];
	memcpy(slot, s, sizeof(*slot));
	atomic_store_explicit(&slot->state, SLOT_PENDING, memory_order_relaxed);
	if (r->made - r->posted == CRYPTO_SLICE)
		ring_post(r);
}

/* The slots made since the last post, sealed or opened by the I/O worker
 * itself. */
static void ring_run_here(struct crypto_ring *r)
{
	for (; r->posted < r->made; r->posted++)
		slot_run(r->own, &r->slots[r->posted]);
}

struct crypto_slot *crypto_ring_next(struct crypto_ring *r)
{
	if (r->released == r->made) {
		r->made = r->posted = r->released = 0;
		return NULL;
	}
	/* A batch's last slice, short of CRYPTO_SLICE (a lone ACK, a ping): waking a
	 * worker and waiting for it would cost more than the crypto, so the I/O
	 * worker does it, while the workers do the whole slices. */
	if (r->posted < r->made && r->own && r->made - r->posted < CRYPTO_SLICE)
		ring_run_here(r);
	else if (r->posted < r->made)
		ring_post(r);
	struct crypto_slot *s = &r->slots[r->released];
	if (!slot_done(s))
		ring_wait(r);
	r->released++;
	return s;
}
