/* SPDX-License-Identifier: MIT
 *
 * handshake.c -- the handshake worker: the responder's public-key work, off
 * Python's thread.
 *
 * An initiation's DH and those of its response depend only on the message,
 * our static key and the initiator's static key, never on a decision.  So a
 * worker thread consumes each initiation C has admitted (its mac1 right, and
 * Python not under load; under load Python admits it first, by cookie and
 * rate limit, and hands it back through dp_handshake_submit) and starts its
 * response: the initiation's DH with our static key, the initiator's static
 * key and timestamp decrypted, the static-static DH (kept per initiator, as
 * noise.c keeps it per peer), then a new ephemeral key and the response's two
 * DH.  What it hands up (DP_UPCALL_INITIATION) leaves
 * Python every decision and no X25519: the peer by its static key, the
 * timestamp and flood checks, the psk, the empty AEAD, the indices, the
 * keypair.  A message that does not authenticate goes up too, marked
 * refused, so that Python counts it towards being under load.
 *
 * The steps are protocol/noise.py's consume_initiation() and
 * start_response(), in the whitepaper's names (5.4.2, 5.4.3), with OpenSSL's
 * EVP: X25519 by EVP_PKEY_derive, BLAKE2s and HMAC-BLAKE2s, and
 * ChaCha20-Poly1305 as crypto.c uses it.
 * tests/planes/test_native_handshake.py holds the two to the same results.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>

#include "internal.h"

#define HANDSHAKE_QUEUE 1024 /* initiations waiting for a worker (wireguard-go's) */
#define HANDSHAKE_WORKERS 1
/* Initiators whose static-static DH is kept (noise.c precomputes it per peer):
 * a hub's peers hash into these slots by their key, a later one taking an
 * earlier one's slot; a miss costs one DH more. */
#define STATIC_CACHE_BITS 12

/* An initiation's fields (whitepaper 5.4.2). */
#define INITIATION_EPHEMERAL 8
#define INITIATION_STATIC (INITIATION_EPHEMERAL + KEY_SIZE)
#define INITIATION_STATIC_LEN (KEY_SIZE + TAG_SIZE)
#define INITIATION_TIMESTAMP (INITIATION_STATIC + INITIATION_STATIC_LEN)
#define INITIATION_TIMESTAMP_LEN (TIMESTAMP_SIZE + TAG_SIZE)

struct handshake_job {
	uint8_t msg[INITIATION_SIZE];
	struct sockaddr_storage src;
	bool admitted;
};

/* A worker's primitives, each made once. */
struct noise_crypto {
	EVP_MD *blake2s;
	EVP_MD_CTX *md;
	EVP_MAC_CTX *hmac;
	struct aead aead;
};

struct static_static {
	bool used;
	uint8_t remote_static[KEY_SIZE];
	uint8_t shared[KEY_SIZE];
};

struct handshakes {
	dp_t *dp;
	pthread_mutex_t lock;
	pthread_cond_t ready;
	/* Our static key and what every handshake starts from; NULL: none. */
	EVP_PKEY *static_key;
	uint8_t chaining_key[HASH_SIZE], hash[HASH_SIZE];
	_Atomic bool keyed; /* static_key is set: read without the lock */
	_Atomic uint64_t under_load_until_ns;
	struct handshake_job *queue; /* a ring of HANDSHAKE_QUEUE */
	size_t head, count;
	/* DH(our static key, theirs) of initiators that authenticated, under
	 * lock, emptied when our key changes. */
	struct static_static *static_cache;
	pthread_t threads[HANDSHAKE_WORKERS];
	int nthreads;
	bool stopping;
};

/* --- The primitives ----------------------------------------------------- */

static int noise_crypto_init(struct noise_crypto *nc)
{
	memset(nc, 0, sizeof(*nc));
	nc->blake2s = EVP_MD_fetch(NULL, "BLAKE2S-256", NULL);
	nc->md = EVP_MD_CTX_new();
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	nc->hmac = mac ? EVP_MAC_CTX_new(mac) : NULL;
	EVP_MAC_free(mac); /* the context holds its own reference */
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "BLAKE2S-256", 0),
		OSSL_PARAM_construct_end()};
	if (!nc->blake2s || !nc->md || !nc->hmac || EVP_MAC_CTX_set_params(nc->hmac, params) != 1 ||
	    aead_init(&nc->aead, 0))
		return -1;
	return 0;
}

static void noise_crypto_free(struct noise_crypto *nc)
{
	EVP_MD_free(nc->blake2s);
	EVP_MD_CTX_free(nc->md);
	EVP_MAC_CTX_free(nc->hmac);
	aead_free(&nc->aead);
}

/* HASH(a || b) */
static int mix_hash(struct noise_crypto *nc, uint8_t out[HASH_SIZE], const uint8_t *a,
		    size_t alen, const uint8_t *b, size_t blen)
{
	unsigned n = 0;
	return EVP_DigestInit_ex(nc->md, nc->blake2s, NULL) == 1 &&
			       EVP_DigestUpdate(nc->md, a, alen) == 1 &&
			       EVP_DigestUpdate(nc->md, b, blen) == 1 &&
			       EVP_DigestFinal_ex(nc->md, out, &n) == 1 && n == HASH_SIZE
		       ? 0
		       : -1;
}

/* HMAC(key, a || b) */
static int hmac(struct noise_crypto *nc, uint8_t out[HASH_SIZE], const uint8_t key[HASH_SIZE],
		const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
	size_t n = 0;
	return EVP_MAC_init(nc->hmac, key, HASH_SIZE, NULL) == 1 &&
			       EVP_MAC_update(nc->hmac, a, alen) == 1 &&
			       (!blen || EVP_MAC_update(nc->hmac, b, blen) == 1) &&
			       EVP_MAC_final(nc->hmac, out, &n, HASH_SIZE) == 1 && n == HASH_SIZE
		       ? 0
		       : -1;
}

/* KDF_1 or KDF_2 (whitepaper 5.4): the chaining key, then a key if `key`. */
static int kdf(struct noise_crypto *nc, uint8_t chaining_key[HASH_SIZE], uint8_t *key,
	       const uint8_t *input, size_t len)
{
	uint8_t prk[HASH_SIZE], one = 1, two = 2;
	int err = hmac(nc, prk, chaining_key, input, len, NULL, 0) ||
		  hmac(nc, chaining_key, prk, &one, 1, NULL, 0) ||
		  (key && hmac(nc, key, prk, chaining_key, HASH_SIZE, &two, 1));
	OPENSSL_cleanse(prk, sizeof(prk));
	return err ? -1 : 0;
}

/* X25519; -1 also for a low-order point, whose all-zero result OpenSSL
 * refuses (the whitepaper rejects it, as protocol/crypto.py's dh does). */
static int dh(uint8_t out[KEY_SIZE], EVP_PKEY *private_key, const uint8_t public_key[KEY_SIZE])
{
	EVP_PKEY *peer = EVP_PKEY_new_raw_public_key_ex(NULL, "X25519", NULL, public_key, KEY_SIZE);
	EVP_PKEY_CTX *ctx = peer ? EVP_PKEY_CTX_new_from_pkey(NULL, private_key, NULL) : NULL;
	size_t len = KEY_SIZE;
	bool ok = ctx && EVP_PKEY_derive_init(ctx) == 1 &&
		  EVP_PKEY_derive_set_peer_ex(ctx, peer, 0) == 1 &&
		  EVP_PKEY_derive(ctx, out, &len) == 1 && len == KEY_SIZE;
	EVP_PKEY_CTX_free(ctx);
	EVP_PKEY_free(peer);
	return ok ? 0 : -1;
}

static EVP_PKEY *private_key(const uint8_t key[KEY_SIZE])
{
	return EVP_PKEY_new_raw_private_key_ex(NULL, "X25519", NULL, key, KEY_SIZE);
}

/* Decrypt with counter 0 (the handshake's), `h` as the associated data. */
static int open_zero(struct noise_crypto *nc, uint8_t *out, const uint8_t key[KEY_SIZE],
		     const uint8_t *in, size_t len, const uint8_t h[HASH_SIZE])
{
	uint8_t nonce[12];
	aead_nonce(nonce, 0);
	return aead_open(&nc->aead, key, 0, nonce, h, HASH_SIZE, in, len, out);
}

/* --- The responder's steps ---------------------------------------------- */

/* The slot of the initiator's static-static DH in the cache. */
static struct static_static *cached(struct handshakes *hs, const uint8_t remote[KEY_SIZE])
{
	return &hs->static_cache[(remote[0] | remote[1] << 8) & ((1 << STATIC_CACHE_BITS) - 1)];
}

/* DH(our static key, the initiator's): from the cache if it holds it (hs NULL:
 * no cache); *fresh says it was computed. */
static int static_static(struct handshakes *hs, EVP_PKEY *static_key,
			 const uint8_t remote[KEY_SIZE], uint8_t shared[KEY_SIZE], bool *fresh)
{
	*fresh = false;
	if (hs) {
		pthread_mutex_lock(&hs->lock);
		struct static_static *slot = cached(hs, remote);
		bool hit = slot->used && !memcmp(slot->remote_static, remote, KEY_SIZE);
		if (hit)
			memcpy(shared, slot->shared, KEY_SIZE);
		pthread_mutex_unlock(&hs->lock);
		if (hit)
			return 0;
	}
	*fresh = true;
	return dh(shared, static_key, remote);
}

/* Keep an initiator's static-static DH once its initiation authenticated with
 * it, unless our key changed meanwhile. */
static void keep_static_static(struct handshakes *hs, EVP_PKEY *static_key,
			       const uint8_t remote[KEY_SIZE], const uint8_t shared[KEY_SIZE])
{
	pthread_mutex_lock(&hs->lock);
	if (hs->static_key == static_key) {
		struct static_static *slot = cached(hs, remote);
		slot->used = true;
		memcpy(slot->remote_static, remote, KEY_SIZE);
		memcpy(slot->shared, shared, KEY_SIZE);
	}
	pthread_mutex_unlock(&hs->lock);
}

/* consume_initiation() of protocol/noise.py, then start_response(): the
 * ephemeral key's private half is `ephemeral` if given (the tests'), else new.
 * `hs` gives the cache of static-static DH (NULL: none).  0, or -1: the
 * initiation does not authenticate. */
static int consume(struct noise_crypto *nc, struct handshakes *hs, EVP_PKEY *static_key,
		   const uint8_t chaining_key[HASH_SIZE], const uint8_t hash[HASH_SIZE],
		   const uint8_t *msg, const uint8_t *ephemeral, struct dp_consumed_initiation *out)
{
	const uint8_t *e_i = msg + INITIATION_EPHEMERAL;
	uint8_t c[HASH_SIZE], h[HASH_SIZE], k[KEY_SIZE], shared[KEY_SIZE], e_r[KEY_SIZE];
	EVP_PKEY *ephemeral_key = NULL;
	size_t len = KEY_SIZE;
	bool fresh;
	int err = -1;
	memcpy(c, chaining_key, HASH_SIZE);
	if (kdf(nc, c, NULL, e_i, KEY_SIZE) || mix_hash(nc, h, hash, HASH_SIZE, e_i, KEY_SIZE) ||
	    dh(shared, static_key, e_i) || kdf(nc, c, k, shared, KEY_SIZE) ||
	    open_zero(nc, out->remote_static, k, msg + INITIATION_STATIC, INITIATION_STATIC_LEN,
		      h) ||
	    mix_hash(nc, h, h, HASH_SIZE, msg + INITIATION_STATIC, INITIATION_STATIC_LEN) ||
	    static_static(hs, static_key, out->remote_static, shared, &fresh) ||
	    kdf(nc, c, k, shared, KEY_SIZE) ||
	    open_zero(nc, out->timestamp, k, msg + INITIATION_TIMESTAMP,
		      INITIATION_TIMESTAMP_LEN, h) ||
	    mix_hash(nc, h, h, HASH_SIZE, msg + INITIATION_TIMESTAMP, INITIATION_TIMESTAMP_LEN))
		goto out;
	if (hs && fresh)
		keep_static_static(hs, static_key, out->remote_static, shared);
	memcpy(out->hash, h, HASH_SIZE);
	memcpy(out->chaining_key, c, HASH_SIZE);
	/* The response, as far as it goes without the peer's psk. */
	if (ephemeral)
		memcpy(e_r, ephemeral, KEY_SIZE);
	else if (RAND_priv_bytes(e_r, KEY_SIZE) != 1)
		goto out;
	ephemeral_key = private_key(e_r);
	if (!ephemeral_key ||
	    EVP_PKEY_get_raw_public_key(ephemeral_key, out->response_ephemeral, &len) != 1 ||
	    len != KEY_SIZE || kdf(nc, c, NULL, out->response_ephemeral, KEY_SIZE) ||
	    mix_hash(nc, out->response_hash, h, HASH_SIZE, out->response_ephemeral, KEY_SIZE) ||
	    dh(shared, ephemeral_key, e_i) || kdf(nc, c, NULL, shared, KEY_SIZE) ||
	    dh(shared, ephemeral_key, out->remote_static) || kdf(nc, c, NULL, shared, KEY_SIZE))
		goto out;
	memcpy(out->response_chaining_key, c, HASH_SIZE);
	err = 0;
out:
	EVP_PKEY_free(ephemeral_key); /* frees its key cleansed */
	OPENSSL_cleanse(c, sizeof(c));
	OPENSSL_cleanse(k, sizeof(k));
	OPENSSL_cleanse(shared, sizeof(shared));
	OPENSSL_cleanse(e_r, sizeof(e_r));
	ERR_clear_error(); /* a refused message leaves OpenSSL's reasons behind */
	return err;
}

/* --- The queue and the workers ----------------------------------------- */

static void consume_job(struct handshakes *hs, struct noise_crypto *nc,
			const struct handshake_job *job)
{
	struct {
		struct dp_consumed_initiation consumed;
		uint8_t msg[INITIATION_SIZE];
	} up;
	uint8_t chaining_key[HASH_SIZE], hash[HASH_SIZE];
	memset(&up, 0, sizeof(up));
	pthread_mutex_lock(&hs->lock);
	EVP_PKEY *key = hs->static_key;
	if (key)
		EVP_PKEY_up_ref(key);
	memcpy(chaining_key, hs->chaining_key, HASH_SIZE);
	memcpy(hash, hs->hash, HASH_SIZE);
	pthread_mutex_unlock(&hs->lock);
	if (!key)
		return; /* the key went while it waited: Python would drop it too */
	if (consume(nc, hs, key, chaining_key, hash, job->msg, NULL, &up.consumed)) {
		memset(&up.consumed, 0, sizeof(up.consumed)); /* what it decrypted, if any */
		up.consumed.status = DP_INITIATION_REFUSED;
	}
	EVP_PKEY_free(key);
	up.consumed.admitted = job->admitted;
	memcpy(up.msg, job->msg, INITIATION_SIZE);
	upcall_send(hs->dp, DP_UPCALL_INITIATION, 0, (const struct sockaddr *)&job->src,
		    (const uint8_t *)&up, sizeof(up));
	OPENSSL_cleanse(&up, sizeof(up));
}

static void *handshake_worker(void *arg)
{
	struct handshakes *hs = arg;
	struct noise_crypto nc;
	struct handshake_job job;
	int err = noise_crypto_init(&nc);
	pthread_mutex_lock(&hs->lock);
	for (;;) {
		while (!hs->count && !hs->stopping)
			pthread_cond_wait(&hs->ready, &hs->lock);
		if (hs->stopping)
			break;
		job = hs->queue[hs->head];
		hs->head = (hs->head + 1) % HANDSHAKE_QUEUE;
		hs->count--;
		pthread_mutex_unlock(&hs->lock);
		if (!err)
			consume_job(hs, &nc, &job);
		pthread_mutex_lock(&hs->lock);
	}
	pthread_mutex_unlock(&hs->lock);
	noise_crypto_free(&nc);
	return NULL;
}

/* Queue an initiation; false: the queue is full, counted as an upcall lost to
 * a full channel (it is one), which limits every source for a while. */
static bool enqueue(dp_t *dp, const uint8_t *msg, const struct sockaddr *src, socklen_t srclen,
		    bool admitted)
{
	struct handshakes *hs = dp->handshakes;
	pthread_mutex_lock(&hs->lock);
	bool room = hs->count < HANDSHAKE_QUEUE;
	if (room) {
		struct handshake_job *job = &hs->queue[(hs->head + hs->count) % HANDSHAKE_QUEUE];
		memcpy(job->msg, msg, INITIATION_SIZE);
		memset(&job->src, 0, sizeof(job->src));
		memcpy(&job->src, src, srclen);
		job->admitted = admitted;
		hs->count++;
		pthread_cond_signal(&hs->ready);
	}
	pthread_mutex_unlock(&hs->lock);
	if (!room)
		upcall_overflowed(dp);
	return room;
}

bool handshake_take(dp_t *dp, const struct sockaddr_storage *src, const uint8_t *d, size_t n,
		    uint64_t now)
{
	struct handshakes *hs = dp->handshakes;
	if (d[0] != MESSAGE_INITIATION || !hs->nthreads ||
	    now < atomic_load_explicit(&hs->under_load_until_ns, memory_order_relaxed))
		return false;
	/* A key cleared after this is noticed by the worker. */
	if (!atomic_load_explicit(&hs->keyed, memory_order_relaxed))
		return false;
	if (upcall_source_allowed(dp, src, now))
		enqueue(dp, d, (const struct sockaddr *)src, sizeof(*src), false);
	return true;
}

int dp_handshake_submit(dp_t *dp, const uint8_t *msg, size_t len, const struct sockaddr *sa,
			socklen_t salen)
{
	struct handshakes *hs = dp->handshakes;
	if (len != INITIATION_SIZE || salen > sizeof(struct sockaddr_storage))
		return -EINVAL;
	pthread_mutex_lock(&hs->lock);
	bool keyed = hs->static_key && hs->nthreads;
	pthread_mutex_unlock(&hs->lock);
	if (!keyed)
		return -ENOKEY;
	return enqueue(dp, msg, sa, salen, true) ? 0 : -EAGAIN;
}

void dp_set_static_key(dp_t *dp, const uint8_t private[KEY_SIZE],
		       const uint8_t chaining_key[HASH_SIZE], const uint8_t hash[HASH_SIZE])
{
	static const uint8_t none[KEY_SIZE];
	struct handshakes *hs = dp->handshakes;
	EVP_PKEY *key = CRYPTO_memcmp(private, none, KEY_SIZE) ? private_key(private) : NULL;
	pthread_mutex_lock(&hs->lock);
	EVP_PKEY *old = hs->static_key;
	hs->static_key = key;
	atomic_store_explicit(&hs->keyed, key != NULL, memory_order_relaxed);
	OPENSSL_cleanse(hs->static_cache, sizeof(*hs->static_cache) << STATIC_CACHE_BITS);
	memcpy(hs->chaining_key, chaining_key, HASH_SIZE);
	memcpy(hs->hash, hash, HASH_SIZE);
	pthread_mutex_unlock(&hs->lock);
	EVP_PKEY_free(old);
}

void dp_set_under_load(dp_t *dp, uint64_t until_ns)
{
	atomic_store_explicit(&dp->handshakes->under_load_until_ns, until_ns, memory_order_relaxed);
}

struct handshakes *handshakes_new(dp_t *dp)
{
	struct handshakes *hs = calloc(1, sizeof(*hs));
	if (!hs)
		return NULL;
	hs->queue = calloc(HANDSHAKE_QUEUE, sizeof(*hs->queue));
	hs->static_cache = calloc((size_t)1 << STATIC_CACHE_BITS, sizeof(*hs->static_cache));
	if (!hs->queue || !hs->static_cache) {
		free(hs->queue);
		free(hs->static_cache);
		free(hs);
		return NULL;
	}
	hs->dp = dp;
	pthread_mutex_init(&hs->lock, NULL);
	pthread_cond_init(&hs->ready, NULL);
	return hs;
}

int handshakes_start(struct handshakes *hs)
{
	hs->stopping = false;
	for (int i = 0; i < HANDSHAKE_WORKERS; i++) {
		int err = thread_spawn(&hs->threads[i], handshake_worker, hs);
		if (err)
			return err;
		hs->nthreads++;
	}
	return 0;
}

/* Join the workers; what waits in the queue is dropped (handshakes are
 * retransmitted). */
void handshakes_stop(struct handshakes *hs)
{
	pthread_mutex_lock(&hs->lock);
	hs->stopping = true;
	pthread_cond_broadcast(&hs->ready);
	pthread_mutex_unlock(&hs->lock);
	for (int i = 0; i < hs->nthreads; i++)
		pthread_join(hs->threads[i], NULL);
	hs->nthreads = 0;
	pthread_mutex_lock(&hs->lock);
	OPENSSL_cleanse(hs->queue, HANDSHAKE_QUEUE * sizeof(*hs->queue));
	hs->head = hs->count = 0;
	pthread_mutex_unlock(&hs->lock);
}

void handshakes_free(struct handshakes *hs)
{
	if (!hs)
		return;
	handshakes_stop(hs);
	EVP_PKEY_free(hs->static_key);
	pthread_mutex_destroy(&hs->lock);
	pthread_cond_destroy(&hs->ready);
	free(hs->queue);
	OPENSSL_cleanse(hs->static_cache, sizeof(*hs->static_cache) << STATIC_CACHE_BITS);
	free(hs->static_cache);
	free(hs);
}

/* consume() once, with its own primitives: the tests' (testhooks.c). */
int handshake_consume_once(const uint8_t private[KEY_SIZE], const uint8_t chaining_key[HASH_SIZE],
			   const uint8_t hash[HASH_SIZE], const uint8_t *msg,
			   const uint8_t ephemeral[KEY_SIZE], struct dp_consumed_initiation *out)
{
	struct noise_crypto nc;
	EVP_PKEY *key = private_key(private);
	int err = noise_crypto_init(&nc);
	memset(out, 0, sizeof(*out));
	if (!key || err)
		err = -ENOMEM;
	else if (consume(&nc, NULL, key, chaining_key, hash, msg, ephemeral, out))
		out->status = DP_INITIATION_REFUSED;
	noise_crypto_free(&nc);
	EVP_PKEY_free(key);
	return err;
}
