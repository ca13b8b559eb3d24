/* SPDX-License-Identifier: MIT
 *
 * crypto.c -- ChaCha20-Poly1305 (RFC 8439) through OpenSSL's EVP interface.
 *
 * One EVP_CIPHER_CTX per thread and direction: the cipher is bound once at
 * creation, and each message only re-keys it (EVP_*Init_ex with a NULL
 * cipher), which is the cheap path in OpenSSL 3.
 */
#include <string.h>

#include "internal.h"

EVP_CIPHER_CTX *aead_ctx_new(int encrypt)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		return NULL;
	if (EVP_CipherInit_ex(ctx, EVP_chacha20_poly1305(), NULL, NULL, NULL, encrypt) != 1) {
		EVP_CIPHER_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

void aead_nonce(uint8_t nonce[12], uint64_t counter)
{
	/* Whitepaper 5.4.6: 32 zero bits followed by the 64-bit little-endian
	 * counter.  Byte by byte so it holds on any host byte order. */
	memset(nonce, 0, 4);
	for (int i = 0; i < 8; i++)
		nonce[4 + i] = (uint8_t)(counter >> (8 * i));
}

int aead_seal(EVP_CIPHER_CTX *ctx, const uint8_t key[32], const uint8_t nonce[12],
	      const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len, size_t pad,
	      uint8_t *out)
{
	/* The zero padding is fed as a second update so a packet can be
	 * encrypted straight from the read buffer into the send buffer. */
	static const uint8_t zeros[MESSAGE_PADDING_MULTIPLE];
	if (pad > sizeof(zeros))
		return -1;
	int n;
	if (EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) != 1)
		return -1;
	if (aad_len && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
		return -1;
	if (len && EVP_EncryptUpdate(ctx, out, &n, in, (int)len) != 1)
		return -1;
	if (pad && EVP_EncryptUpdate(ctx, out + len, &n, zeros, (int)pad) != 1)
		return -1;
	len += pad;
	if (EVP_EncryptFinal_ex(ctx, out + len, &n) != 1)
		return -1;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, NOISE_AUTHTAG_LEN, out + len) != 1)
		return -1;
	return 0;
}

int aead_open(EVP_CIPHER_CTX *ctx, const uint8_t key[32], const uint8_t nonce[12],
	      const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len, uint8_t *out)
{
	int n;
	uint8_t tag[NOISE_AUTHTAG_LEN];
	if (len < NOISE_AUTHTAG_LEN)
		return -1;
	len -= NOISE_AUTHTAG_LEN;
	memcpy(tag, in + len, NOISE_AUTHTAG_LEN); /* in may be overwritten in place */
	if (EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) != 1)
		return -1;
	if (aad_len && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
		return -1;
	if (len && EVP_DecryptUpdate(ctx, out, &n, in, (int)len) != 1)
		return -1;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, NOISE_AUTHTAG_LEN, tag) != 1)
		return -1;
	if (EVP_DecryptFinal_ex(ctx, out + len, &n) != 1)
		return -1; /* tag mismatch */
	return 0;
}

/* Test hooks: the same code path with a fresh context. */
int dp_test_aead_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
		      size_t aad_len, const uint8_t *pt, size_t len, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx = aead_ctx_new(1);
	if (!ctx)
		return -1;
	int r = aead_seal(ctx, key, nonce, aad, aad_len, pt, len, 0, out);
	EVP_CIPHER_CTX_free(ctx);
	return r;
}

int dp_test_aead_open(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
		      size_t aad_len, const uint8_t *ct, size_t len, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx = aead_ctx_new(0);
	if (!ctx)
		return -1;
	int r = aead_open(ctx, key, nonce, aad, aad_len, ct, len, out);
	EVP_CIPHER_CTX_free(ctx);
	return r;
}
