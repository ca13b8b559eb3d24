/* SPDX-License-Identifier: MIT
 *
 * pipeline_bench.c -- the pipeline alone (`pyvpn bench --pipeline`): the
 * calling thread plays the I/O worker, without kernel I/O, and seals then
 * opens batches of packets through a ring and the crypto workers, as the
 * data path does with a batch of device reads and one of datagrams.  What it
 * shows is how the crypto scales with the workers where cores are free; the
 * tunnel's figures add the kernel's work, the device's and the socket's.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline.h"

#define BENCH_BATCH 1024 /* slots per batch: a TX batch of super-packets makes ~700 */

/* Push one batch of n packets (each `stride` bytes apart) in one direction
 * and release it: how many slots failed. */
static int bench_batch(struct crypto_ring *r, uint8_t *bufs, size_t stride, int n, int size,
		       int op, uint64_t first_counter)
{
	static const uint8_t key[32] = {1, 2, 3, 4, 5, 6, 7, 8};
	for (int i = 0; i < n; i++) {
		uint8_t *p = bufs + i * stride;
		struct crypto_slot s = {.key = key, .key_id = 1, .counter = first_counter + i,
					.in = p, .out = p, .op = op,
					.len = op == CRYPTO_SEAL ? size : size + TAG_SIZE};
		crypto_ring_push(r, &s);
	}
	int failed = 0;
	struct crypto_slot *s;
	while ((s = crypto_ring_next(r)))
		failed += atomic_load_explicit(&s->state, memory_order_relaxed) == SLOT_FAILED;
	return failed;
}

static uint64_t process_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int dp_bench_pipeline(int workers, int packets, int size, uint64_t *ns, uint64_t *cpu_ns)
{
	if (packets < 1 || size < 1 || size > MAX_MTU)
		return -EINVAL;
	_Atomic uint64_t keypairs_freed = 0;
	struct crypto_pool *pool = crypto_pool_start(workers, &keypairs_freed);
	if (!pool)
		return workers < 1 || workers > MAX_CRYPTO_WORKERS ? -EINVAL : -ENOMEM;
	size_t stride = ((size_t)size + TAG_SIZE + 63) & ~(size_t)63;
	uint8_t *bufs = calloc(BENCH_BATCH, stride);
	struct crypto_ring ring;
	int err = crypto_ring_init(&ring, pool, BENCH_BATCH, NULL);
	if (!err && !bufs)
		err = -ENOMEM;
	uint64_t start = now_ns(), cpu_start = process_cpu_ns();
	for (int done = 0; !err && done < packets; done += BENCH_BATCH) {
		int n = packets - done < BENCH_BATCH ? packets - done : BENCH_BATCH;
		if (bench_batch(&ring, bufs, stride, n, size, CRYPTO_SEAL, done) ||
		    bench_batch(&ring, bufs, stride, n, size, CRYPTO_OPEN, done))
			err = -EBADMSG; /* an open that fails: the ring mixed slots up */
	}
	*ns = now_ns() - start;
	*cpu_ns = process_cpu_ns() - cpu_start;
	crypto_ring_free(&ring);
	crypto_pool_stop(pool);
	free(bufs);
	return err;
}
