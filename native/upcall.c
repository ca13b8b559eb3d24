/* SPDX-License-Identifier: MIT
 *
 * upcall.c -- messages to Python over the SOCK_SEQPACKET control socket.
 *
 * One message per event: struct dp_upcall_hdr then the payload.  Sent with
 * MSG_DONTWAIT: a worker must never block on Python; if Python falls behind
 * the upcall is dropped and counted (handshake packets are retransmitted by
 * the protocol's timers anyway).
 */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/uio.h>

#include "internal.h"

void upcall_send(dp_t *dp, int kind, uint32_t peer_id, const struct sockaddr *sa,
		 const uint8_t *payload, size_t len)
{
	struct dp_upcall_hdr h;
	memset(&h, 0, sizeof(h));
	h.kind = (uint8_t)kind;
	h.peer_id = peer_id;
	if (sa && sa->sa_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
		h.family = AF_INET;
		h.port = s->sin_port; /* already big-endian */
		memcpy(h.addr, &s->sin_addr, 4);
	} else if (sa && sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
		h.family = AF_INET6;
		h.port = s->sin6_port;
		memcpy(h.addr, &s->sin6_addr, 16);
	}
	struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)payload, len}};
	struct msghdr m = {.msg_iov = iov, .msg_iovlen = len ? 2 : 1};
	if (sendmsg(dp->ctrl_fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		STAT_ADD(dp->st.upcalls_dropped, 1);
	else
		STAT_ADD(dp->st.upcalls_sent, 1);
}
