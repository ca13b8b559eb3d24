/* SPDX-License-Identifier: MIT
 *
 * The send path, from a device read to the datagrams on the wire (send.c
 * tx_packet, included for its static functions): virtio headers, TSO/USO
 * segmentation and checksums, tap frames behind VLAN tags, the switch and
 * split horizon, the TOO_BIG and UNROUTED upcalls, encryption under the fixed
 * test key, by the calling thread or through the ring and crypto workers.
 */
#include "send.c"

#include "harness.h"

/* tun and tap, each with and without virtio headers, each without and with
 * crypto workers. */
static struct fuzz_bed beds[8];
static struct tx_state *tx[8];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const uint32_t flags[4] = {0, DP_VNET_HDR, DP_TAP, DP_TAP | DP_VNET_HDR};
	for (int i = 0; i < 8; i++) {
		beds[i] = i < 4 ? fuzz_bed_new(flags[i]) : fuzz_bed_parallel(flags[i - 4]);
		if (!(tx[i] = tx_state_new(beds[i].dp)))
			abort();
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int which = data[0] & 7;
	struct tx_state *t = tx[which];
	if (size - 1 > t->buf_size)
		return 0;
	memcpy(t->bufs[0], data + 1, size - 1);
	pthread_rwlock_rdlock(&beds[which].dp->lock);
	uint64_t now = now_ns();
	tx_packet(t, t->bufs[0], size - 1, now, true);
	tx_release(t, now);
	pthread_rwlock_unlock(&beds[which].dp->lock);
	udp_send_queued(beds[which].dp, &t->out);
	fuzz_drain(beds[which].ctrl);
	return 0;
}
