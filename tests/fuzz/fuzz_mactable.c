/* SPDX-License-Identifier: MIT
 *
 * tap's learning switch (mactable.c): sequences of learning, lookups,
 * allowed MACs bound, peers forgotten and time passing, with an invariant:
 * a MAC address fresh behind one peer never moves to another.
 */
#include "harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct fuzz_bed b;
	static bool ready;
	if (!ready) {
		b = fuzz_bed_new(DP_TAP);
		for (uint32_t id = 2; id <= 4; id++)
			if (dp_peer_add(b.dp, id))
				abort();
		dp_set_mac_ageing(b.dp, 10);
		ready = true;
	}
	uint64_t now = 1000000000000ULL;
	for (size_t at = 0; at + 8 <= size; at += 8) {
		const uint8_t *mac = data + at + 2;
		uint32_t peer = 1 + data[at + 1] % 4, owner = 0;
		switch (data[at] % 5) {
		case 0: {
			bool held = mac_lookup(b.dp, mac, now, &owner);
			int r = mac_learn(b.dp, mac, peer, now);
			if (held && owner != peer && r != DP_MAC_HELD_BY_OTHER)
				abort(); /* a fresh entry moved */
			break;
		}
		case 1:
			mac_lookup(b.dp, mac, now, &owner);
			break;
		case 2:
			dp_peer_set_allowed_macs(b.dp, peer, mac, data[at + 1] & 0x80 ? 1 : 0);
			break;
		case 3:
			mac_forget_peer(b.dp, peer);
			dp_peer_set_allowed_macs(b.dp, peer, NULL, 0);
			break;
		default:
			now += (uint64_t)data[at + 1] * 100000000ULL; /* up to 25.5 s */
		}
	}
	for (uint32_t id = 1; id <= 4; id++) {
		mac_forget_peer(b.dp, id);
		dp_peer_set_allowed_macs(b.dp, id, NULL, 0);
	}
	return 0;
}
