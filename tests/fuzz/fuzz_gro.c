/* SPDX-License-Identifier: MIT
 *
 * GRO on the way into the device (offload.c gro_add, gro_flush): a batch of
 * decrypted packets or frames, cut from the input by 2-byte lengths, coalesced
 * where they are one TCP flow and written out.
 */
#include <fcntl.h>

#include "harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t pkts[RX_MSGS_PER_BATCH][MAX_SUPER_PACKET];
	static int null_fd = -1;
	static _Atomic uint64_t coalesced;
	if (null_fd < 0 && (null_fd = open("/dev/null", O_WRONLY)) < 0)
		abort();
	if (size < 1)
		return 0;
	bool tap = data[0] & 1, vnet = data[0] & 2;
	struct gro_batch *b = gro_new(RX_MSGS_PER_BATCH);
	if (!b)
		abort();
	size_t at = 1;
	for (int i = 0; i < RX_MSGS_PER_BATCH && at + 2 <= size; i++) {
		size_t len = (size_t)data[at] | (size_t)data[at + 1] << 8;
		at += 2;
		if (len > size - at)
			len = size - at;
		memcpy(pkts[i], data + at, len);
		at += len;
		if (!gro_add(b, pkts[i], len, tap, vnet))
			break;
	}
	gro_flush(b, null_fd, vnet, &coalesced);
	gro_free(b);
	return 0;
}
