/* SPDX-License-Identifier: MIT
 *
 * testhooks.h -- what the tests reach inside the native plane (testhooks.c),
 * kept apart from dp.h, the plane's API: nothing but tests may call these.
 * native/build.py hands cffi both headers.
 */
#ifndef PYVPN_TESTHOOKS_H
#define PYVPN_TESTHOOKS_H

#include "dp.h"

/* Small, pure, no dp_t: the AEAD exactly as the data path uses it, and the
 * replay window.  Return 0 / 1 (accepted) as documented. */
int dp_test_aead_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
		      size_t aad_len, const uint8_t *pt, size_t len, uint8_t *out /* len+16 */);
int dp_test_aead_open(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
		      size_t aad_len, const uint8_t *ct, size_t len /* incl. tag */,
		      uint8_t *out);
typedef struct dp_replay dp_replay_t;
dp_replay_t *dp_test_replay_new(void);
int dp_test_replay_check(dp_replay_t *, uint64_t counter); /* 1 = accept */
void dp_test_replay_free(dp_replay_t *);
uint64_t dp_test_replay_window_size(void);
/* How many of the workers' AEAD contexts hold a key (racy: for tests). */
int dp_test_cached_keys(dp_t *);
/* Whether the peer's CURRENT may send at a time `offset_ns` from its birth, as
 * keypair_usable_for_send() judges it (0, -ENOKEY, -EKEYEXPIRED). */
int dp_test_usable_at(dp_t *, uint32_t peer_id, int64_t offset_ns);
/* Set the send counter of the peer's CURRENT, to reach the message limits
 * without sending 2^60 messages.  -ENOKEY without CURRENT. */
int dp_test_set_send_counter(dp_t *, uint32_t peer_id, uint64_t counter);
/* tap's learning switch at a time of the caller's choosing (CLOCK_BOOTTIME ns),
 * as the workers use it: learn a source MAC from a frame that authenticated from
 * peer_id (a DP_MAC_* answer), who it sits behind (1: found, *peer_id set), and
 * the learned entries (as dp_mac_table). */
int dp_test_mac_learn(dp_t *, const uint8_t mac[6], uint32_t peer_id, uint64_t now_ns);
int dp_test_mac_owner_at(dp_t *, const uint8_t mac[6], uint64_t now_ns, uint32_t *peer_id);
int dp_test_mac_table_at(dp_t *, uint64_t now_ns, struct dp_mac_entry *out, int max);
/* The peer whose allowed IPs hold `addr` (4 or 16 bytes by family), as the
 * workers route a packet: 1 found, *peer_id set; 0 none. */
int dp_test_allowed_ips_lookup(dp_t *, int family, const uint8_t *addr, uint32_t *peer_id);
/* The handshake worker's steps on one initiation (native/handshake.c), keyed
 * with `private_key` and starting from `chaining_key` and `hash` as
 * dp_set_static_key's, the response's ephemeral private key given: 0, with
 * out->status saying whether it authenticated; -ENOMEM. */
int dp_test_consume_initiation(const uint8_t private_key[32], const uint8_t chaining_key[32],
			       const uint8_t hash[32], const uint8_t msg[148],
			       const uint8_t ephemeral_private[32],
			       struct dp_consumed_initiation *out);

#endif
