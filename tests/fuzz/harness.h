/* SPDX-License-Identifier: MIT
 *
 * harness.h -- what the libFuzzer harnesses of the native plane share: a dp_t
 * on socketpairs and loopback UDP (nothing leaves the host), with one peer
 * holding a keypair under a fixed test key.
 */
#ifndef PYVPN_FUZZ_HARNESS_H
#define PYVPN_FUZZ_HARNESS_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "pipeline.h"

#define FUZZ_PEER 1
#define FUZZ_LOCAL_INDEX 0x01020304u
#define FUZZ_REMOTE_INDEX 0x05060708u

static const uint8_t FUZZ_KEY[32] = {
	0x70, 0x79, 0x76, 0x70, 0x6e, 0x2d, 0x66, 0x75, 0x7a, 0x7a, 0x2d, 0x6b, 0x65, 0x79, 0x00, 0x01,
	0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11,
};

struct fuzz_bed {
	dp_t *dp;
	int dev, ctrl; /* the far ends of the device and control socketpairs */
	struct sockaddr_storage peer;
};

static int fuzz_loopback_udp(struct sockaddr_storage *bound)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) ||
	    getsockname(fd, (struct sockaddr *)bound, &len))
		abort();
	return fd;
}

/* A plane that is never started: the harness calls its functions itself. */
static struct fuzz_bed fuzz_bed_new(uint32_t flags)
{
	struct fuzz_bed b;
	int dev[2], ctrl[2];
	struct sockaddr_storage own;
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, dev) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0, ctrl))
		abort();
	int udp = fuzz_loopback_udp(&own);
	fuzz_loopback_udp(&b.peer); /* where the peer's transport messages go */
	b.dp = dp_create(dev[0], udp, ctrl[0], flags, 1420);
	if (!b.dp)
		abort();
	b.dev = dev[1];
	b.ctrl = ctrl[1];
	struct dp_prefix all[2] = {{.family = AF_INET, .cidr = 0}, {.family = AF_INET6, .cidr = 0}};
	if (dp_peer_add(b.dp, FUZZ_PEER) ||
	    dp_peer_set_endpoint(b.dp, FUZZ_PEER, (struct sockaddr *)&b.peer, sizeof(struct sockaddr_in)) ||
	    (!(flags & DP_TAP) && dp_allowed_ips_set(b.dp, FUZZ_PEER, all, 2)) ||
	    dp_keypair_install(b.dp, FUZZ_PEER, 1, FUZZ_LOCAL_INDEX, FUZZ_REMOTE_INDEX, FUZZ_KEY,
			       FUZZ_KEY))
		abort();
	dp_set_mac1_key(b.dp, FUZZ_KEY);
	return b;
}

/* The same with crypto workers, whose rings the states made for it use
 * (pipeline.c): the data path's parallel form. */
static struct fuzz_bed fuzz_bed_parallel(uint32_t flags)
{
	struct fuzz_bed b = fuzz_bed_new(flags);
	if (!(b.dp->crypto = crypto_pool_start(2, &b.dp->keypairs_freed)))
		abort();
	return b;
}

/* Empty what the plane wrote, so that every input finds room again. */
static void fuzz_drain(int fd)
{
	static uint8_t sink[MAX_SUPER_PACKET + 64];
	while (recv(fd, sink, sizeof(sink), MSG_DONTWAIT) >= 0)
		;
}

#endif
