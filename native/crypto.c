/* SPDX-License-Identifier: MIT
 *
 * crypto.c -- ChaCha20-Poly1305 (RFC 8439) through OpenSSL's EVP interface.
 *
 * One EVP_CIPHER_CTX per thread and direction: the cipher is bound once at
 * creation.  A message under the key the context already holds (known by
 * keypair id) only sets the nonce (EVP_*Init_ex with a NULL cipher and key,
 * which in OpenSSL 3 resets the AEAD state: counters, AAD, the Poly1305
 * one-time key); a new key is loaded together with the nonce.  The tag goes
 * in and out as an OSSL_PARAM directly, which skips EVP_CIPHER_CTX_ctrl()'s
 * translation layer.
 *
 * Per-message EVP overhead (init, final, tag) is ~250 ns on the machines we
 * measured, a quarter of the cost of sealing a 1420-byte packet, so it is
 * worth every nanosecond trimmed here.
 *
 * Also mac1 (whitepaper 5.4.4): keyed BLAKE2s with a 16-byte digest, OpenSSL's
 * BLAKE2SMAC, so junk handshakes are dropped without waking Python.
 */
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>

#include "internal.h"

int aead_init(struct aead *a, int encrypt)
{
	memset(a, 0, sizeof(*a));
	a->ctx = EVP_CIPHER_CTX_new();
	if (!a->ctx)
		return -1;
	if (EVP_CipherInit_ex(a->ctx, EVP_chacha20_poly1305(), NULL, NULL, NULL, encrypt) != 1) {
		EVP_CIPHER_CTX_free(a->ctx);
		a->ctx = NULL;
		return -1;
	}
	return 0;
}

void aead_free(struct aead *a)
{
	if (a->ctx)
		EVP_CIPHER_CTX_free(a->ctx); /* cleanses the key schedule */
	a->ctx = NULL;
	a->key_id = 0;
}

void aead_forget(struct aead *a)
{
	static const uint8_t zeros[32];
	if (!a->key_id)
		return;
	EVP_CipherInit_ex(a->ctx, NULL, NULL, zeros, zeros, -1);
	a->key_id = 0;
}

void aead_nonce(uint8_t nonce[12], uint64_t counter)
{
	/* Whitepaper 5.4.6: 32 zero bits followed by the 64-bit little-endian
	 * counter.  Byte by byte so it holds on any host byte order. */
	memset(nonce, 0, 4);
	for (int i = 0; i < 8; i++)
		nonce[4 + i] = (uint8_t)(counter >> (8 * i));
}

/* Start a message: the nonce, and the key only if it changed.  Keys are
 * told apart by id, not compared: a compare of key bytes per packet must be
 * constant-time, and that cost ~1% of a TCP stream's CPU. */
static int aead_start(struct aead *a, const uint8_t key[32], uint64_t key_id,
		      const uint8_t nonce[12])
{
	if (key_id && a->key_id == key_id)
		return EVP_CipherInit_ex(a->ctx, NULL, NULL, NULL, nonce, -1) == 1 ? 0 : -1;
	a->key_id = 0;
	if (EVP_CipherInit_ex(a->ctx, NULL, NULL, key, nonce, -1) != 1)
		return -1;
	a->key_id = key_id;
	return 0;
}

static int aead_tag(struct aead *a, uint8_t tag[TAG_SIZE], int get)
{
	OSSL_PARAM p[2] = {
		OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, TAG_SIZE),
		OSSL_PARAM_construct_end()};
	return (get ? EVP_CIPHER_CTX_get_params(a->ctx, p) : EVP_CIPHER_CTX_set_params(a->ctx, p)) == 1
		       ? 0
		       : -1;
}

int aead_seal(struct aead *a, const uint8_t key[32], uint64_t key_id, const uint8_t nonce[12],
	      const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len, size_t pad,
	      uint8_t *out)
{
	int n;
	if (pad > MESSAGE_PADDING_MULTIPLE)
		return -1;
	if (aead_start(a, key, key_id, nonce))
		return -1;
	if (aad_len && EVP_EncryptUpdate(a->ctx, NULL, &n, aad, (int)aad_len) != 1)
		return -1;
	if (pad) {
		/* The padding is zeros after the packet: put them there and
		 * seal it all in one update (one call costs less than two,
		 * and a split stream leaves ChaCha20 its slow partial-block
		 * path).  `out` has room for them either way. */
		if (in != out)
			memmove(out, in, len);
		memset(out + len, 0, pad);
		in = out;
		len += pad;
	}
	if (len && EVP_EncryptUpdate(a->ctx, out, &n, in, (int)len) != 1)
		return -1;
	if (EVP_EncryptFinal_ex(a->ctx, out + len, &n) != 1)
		return -1;
	return aead_tag(a, out + len, 1);
}

int aead_open(struct aead *a, const uint8_t key[32], uint64_t key_id, const uint8_t nonce[12],
	      const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len, uint8_t *out)
{
	int n;
	uint8_t tag[TAG_SIZE];
	if (len < TAG_SIZE)
		return -1;
	len -= TAG_SIZE;
	memcpy(tag, in + len, TAG_SIZE); /* in may be overwritten in place */
	if (aead_start(a, key, key_id, nonce))
		return -1;
	if (aad_len && EVP_DecryptUpdate(a->ctx, NULL, &n, aad, (int)aad_len) != 1)
		return -1;
	if (len && EVP_DecryptUpdate(a->ctx, out, &n, in, (int)len) != 1)
		return -1;
	if (aead_tag(a, tag, 0) || EVP_DecryptFinal_ex(a->ctx, out + len, &n) != 1) {
		a->key_id = 0; /* tag mismatch: start the next one from scratch */
		return -1;
	}
	return 0;
}

int mac1_init(struct mac1 *m)
{
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "BLAKE2SMAC", NULL);
	m->ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
	EVP_MAC_free(mac); /* the context holds its own reference */
	return m->ctx ? 0 : -1;
}

void mac1_free(struct mac1 *m)
{
	EVP_MAC_CTX_free(m->ctx);
	m->ctx = NULL;
}

bool mac1_valid(struct mac1 *m, const uint8_t key[32], const uint8_t *msg, size_t len)
{
	size_t size = MAC_SIZE, n = 0;
	OSSL_PARAM params[] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size),
			       OSSL_PARAM_construct_end()};
	uint8_t mac[MAC_SIZE];
	const size_t at = len - 2 * MAC_SIZE; /* mac1, then mac2, end the message */
	return EVP_MAC_init(m->ctx, key, 32, params) == 1 &&
	       EVP_MAC_update(m->ctx, msg, at) == 1 &&
	       EVP_MAC_final(m->ctx, mac, &n, sizeof(mac)) == 1 && n == MAC_SIZE &&
	       CRYPTO_memcmp(mac, msg + at, MAC_SIZE) == 0;
}
