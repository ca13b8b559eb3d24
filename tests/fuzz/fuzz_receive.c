/* SPDX-License-Identifier: MIT
 *
 * The receive path, from a datagram to the packet written into the device
 * (receive.c rx_datagram, included for its static functions): raw datagrams,
 * and transport messages sealed under the fixed test key so that the
 * decrypted packet's parsing (IP or Ethernet, allowed IPs, MAC learning,
 * coalescing) is reached too; opened by the calling thread or through the
 * ring and crypto workers.
 */
#include "receive.c"

#include "harness.h"

/* tun, tap, then both with crypto workers. */
static struct fuzz_bed beds[4];
static struct rx_state *rx[4];
static struct aead seal;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const uint32_t flags[2] = {DP_VNET_HDR, DP_TAP | DP_VNET_HDR};
	for (int i = 0; i < 4; i++) {
		beds[i] = i < 2 ? fuzz_bed_new(flags[i]) : fuzz_bed_parallel(flags[i - 2]);
		if (!(rx[i] = rx_state_new(beds[i].dp)))
			abort();
	}
	if (aead_init(&seal, 1))
		abort();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t d[MAX_SUPER_PACKET + 64];
	if (size < 1 || size > MAX_SUPER_PACKET - 64)
		return 0;
	bool l2 = data[0] & 1, sealed = data[0] & 2;
	int which = (l2 ? 1 : 0) + (data[0] & 4 ? 2 : 0);
	struct fuzz_bed *b = &beds[which];
	struct rx_state *r = rx[which];
	size_t n = size - 1;
	if (sealed && n >= 8) {
		/* A transport message for the keypair, counter from the input. */
		uint64_t counter;
		memcpy(&counter, data + 1, 8);
		size_t len = n - 8;
		d[0] = MESSAGE_TRANSPORT;
		d[1] = l2 ? MARKER_L2 : 0;
		d[2] = d[3] = 0;
		for (int i = 0; i < 4; i++)
			d[4 + i] = (uint8_t)(FUZZ_LOCAL_INDEX >> (8 * i));
		memcpy(d + 8, &counter, 8);
		uint8_t nonce[12];
		aead_nonce(nonce, counter);
		if (aead_seal(&seal, FUZZ_KEY, 0, nonce, NULL, 0, data + 9, len, 0,
			      d + TRANSPORT_HEADER_SIZE))
			abort();
		n = TRANSPORT_HEADER_SIZE + len + TAG_SIZE;
	} else {
		memcpy(d, data + 1, n);
	}
	struct sockaddr_storage src = b->peer;
	uint64_t now = now_ns();
	pthread_rwlock_rdlock(&b->dp->lock);
	rx_datagram(r, d, n, &src, now);
	if (r->parallel)
		rx_release(r, now);
	pthread_rwlock_unlock(&b->dp->lock);
	gro_flush(r->gro, b->dp->dev_fd, b->dp->vnet, &b->dp->st.rx_coalesced);
	gro_reset(r->gro);
	fuzz_drain(b->dev);
	fuzz_drain(b->ctrl);
	return 0;
}
