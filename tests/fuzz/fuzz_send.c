/* SPDX-License-Identifier: MIT
 *
 * The send path, from a device read to the datagrams on the wire (send.c
 * tx_packet, included for its static functions): virtio headers, TSO/USO
 * segmentation and checksums, tap frames behind VLAN tags, the switch and
 * split horizon, the TOO_BIG and UNROUTED upcalls, encryption under the fixed
 * test key.
 */
#include "send.c"

#include "harness.h"

static struct fuzz_bed beds[4]; /* tun and tap, each with and without virtio headers */
static struct tx_state *tx[4];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const uint32_t flags[4] = {0, DP_VNET_HDR, DP_TAP, DP_TAP | DP_VNET_HDR};
	for (int i = 0; i < 4; i++) {
		beds[i] = fuzz_bed_new(flags[i]);
		if (!(tx[i] = tx_state_new(beds[i].dp)))
			abort();
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int which = data[0] & 3;
	struct tx_state *t = tx[which];
	if (size - 1 > t->buf_size)
		return 0;
	memcpy(t->bufs[0], data + 1, size - 1);
	pthread_rwlock_rdlock(&beds[which].dp->lock);
	tx_packet(t, t->bufs[0], size - 1, now_ns(), true);
	pthread_rwlock_unlock(&beds[which].dp->lock);
	udp_send_queued(beds[which].dp, &t->out);
	fuzz_drain(beds[which].ctrl);
	return 0;
}
