/* SPDX-License-Identifier: MIT
 *
 * socket.c -- the UDP socket: its set-up (buffers, UDP GRO, whether UDP GSO
 * is there), recvmmsg of a batch (each buffer maybe a UDP GRO train of
 * equal-size datagrams), and sendmmsg of the transport messages send.c
 * queued, runs of equal-size messages to one endpoint as one UDP GSO send
 * (UDP_SEGMENT), one by one where the route refuses it.  As the kernel's
 * socket.c and wireguard-go's conn/, it knows datagrams and endpoints, never
 * peers or keys.
 */
#include <errno.h>
#include <linux/udp.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define SOCKET_BUFFER_SIZE (7 << 20) /* wireguard-go's conn/ asks for 7 MiB */
#define UDP_RECV_BUF_SIZE 65536

static void set_socket_buffers(int fd)
{
	int sz = SOCKET_BUFFER_SIZE;
	/* *FORCE ignores rmem_max/wmem_max but needs CAP_NET_ADMIN. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
}

int udp_setup(dp_t *dp)
{
	int v = 0;
	socklen_t l = sizeof(v);
	if (getsockopt(dp->udp_fd, SOL_SOCKET, SO_TYPE, &v, &l) < 0 || v != SOCK_DGRAM)
		return -EINVAL;
	l = sizeof(v);
	if (getsockopt(dp->udp_fd, SOL_SOCKET, SO_DOMAIN, &v, &l) < 0 ||
	    (v != AF_INET && v != AF_INET6))
		return -EAFNOSUPPORT;
	dp->udp_family = v;
	set_socket_buffers(dp->udp_fd);
	/* UDP_GRO only changes what recvmsg returns (we are the only reader);
	 * UDP_SEGMENT is passed per message as a cmsg and never set on the
	 * socket, so Python's plain sendto() of a handshake stays plain. */
	v = 1;
	dp->udp_gro = setsockopt(dp->udp_fd, SOL_UDP, UDP_GRO, &v, sizeof(v)) == 0;
	l = sizeof(v);
	atomic_store(&dp->udp_gso, getsockopt(dp->udp_fd, SOL_UDP, UDP_SEGMENT, &v, &l) == 0);
	return 0;
}

/* --- Receiving ---------------------------------------------------------- */

int udp_recv_batch_init(struct udp_recv_batch *b)
{
	for (int i = 0; i < RX_MSGS_PER_BATCH; i++)
		if (!(b->bufs[i] = malloc(UDP_RECV_BUF_SIZE)))
			return -ENOMEM;
	return 0;
}

void udp_recv_batch_free(struct udp_recv_batch *b)
{
	for (int i = 0; i < RX_MSGS_PER_BATCH; i++)
		free(b->bufs[i]);
}

int udp_receive(dp_t *dp, struct udp_recv_batch *b)
{
	for (int i = 0; i < RX_MSGS_PER_BATCH; i++) {
		b->iov[i] = (struct iovec){b->bufs[i], UDP_RECV_BUF_SIZE};
		struct msghdr *h = &b->mm[i].msg_hdr;
		memset(h, 0, sizeof(*h));
		h->msg_iov = &b->iov[i];
		h->msg_iovlen = 1;
		h->msg_name = &b->src[i];
		h->msg_namelen = sizeof(b->src[i]);
		h->msg_control = b->cmsg[i].buf;
		h->msg_controllen = sizeof(b->cmsg[i].buf);
	}
	int n = recvmmsg(dp->udp_fd, b->mm, RX_MSGS_PER_BATCH, MSG_DONTWAIT, NULL);
	return n > 0 ? n : 0;
}

size_t udp_segment_size(struct udp_recv_batch *b, int i)
{
	struct msghdr *h = &b->mm[i].msg_hdr;
	size_t len = b->mm[i].msg_len;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
		if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
			int v;
			memcpy(&v, CMSG_DATA(c), sizeof(v));
			size_t seg = (size_t)v;
			return !seg || seg > len ? len : seg;
		}
	}
	return len;
}

/* --- Sending ------------------------------------------------------------ */

int udp_send_queue_init(struct udp_send_queue *q)
{
	q->arena = malloc(UDP_SEND_ARENA_SIZE);
	q->msgs = calloc(UDP_SEND_MAX_MSGS, sizeof(*q->msgs));
	q->mm = calloc(UDP_SEND_MAX_MSGS, sizeof(*q->mm));
	q->iov = calloc(UDP_SEND_MAX_MSGS, sizeof(*q->iov));
	q->cmsg = calloc(UDP_SEND_MAX_MSGS, sizeof(*q->cmsg));
	return q->arena && q->msgs && q->mm && q->iov && q->cmsg ? 0 : -ENOMEM;
}

void udp_send_queue_free(struct udp_send_queue *q)
{
	free(q->arena);
	free(q->msgs);
	free(q->mm);
	free(q->iov);
	free(q->cmsg);
}

/* Wait until the UDP socket can take more; false when stopping. */
static bool wait_writable(dp_t *dp)
{
	struct pollfd pfd[2] = {{dp->udp_fd, POLLOUT, 0}, {dp->stop_efd, POLLIN, 0}};
	poll(pfd, 2, 100);
	return !atomic_load(&dp->stopping);
}

/* Where the run of messages that can go as one UDP GSO send from `start`
 * ends: one endpoint, contiguous, all but the last of exactly the first's
 * size (the kernel cuts at gso_size), at most UDP_GSO_MAX_SEGS of them and
 * UDP_GSO_MAX_BYTES in all.  *total: its bytes. */
static int gso_run_end(const struct udp_send_queue *q, int start, bool gso, uint32_t *total)
{
	uint32_t size = q->msgs[start].len;
	int i = start + 1;
	*total = size;
	for (; gso && i < q->nmsgs && i - start < UDP_GSO_MAX_SEGS; i++) {
		const struct udp_queued *m = &q->msgs[i], *prev = &q->msgs[i - 1];
		if (m->ep != q->msgs[start].ep || m->off != prev->off + prev->len ||
		    prev->len != size || m->len > size || *total + m->len > UDP_GSO_MAX_BYTES)
			break;
		*total += m->len;
	}
	return i;
}

/* The sendmmsg vector: one entry per run, a run of several with its
 * segment size in a UDP_SEGMENT cmsg.  Returns its length. */
static int queue_to_mmsg(struct udp_send_queue *q, bool gso)
{
	int nmm = 0;
	for (int i = 0; i < q->nmsgs;) {
		int start = i;
		uint32_t total;
		i = gso_run_end(q, start, gso, &total);
		struct msghdr *h = &q->mm[nmm].msg_hdr;
		memset(h, 0, sizeof(*h));
		q->iov[nmm] = (struct iovec){q->arena + q->msgs[start].off, total};
		h->msg_iov = &q->iov[nmm];
		h->msg_iovlen = 1;
		h->msg_name = &q->eps[q->msgs[start].ep];
		h->msg_namelen = q->eplens[q->msgs[start].ep];
		if (i - start > 1) {
			struct cmsghdr *c = (struct cmsghdr *)q->cmsg[nmm].buf;
			c->cmsg_level = SOL_UDP;
			c->cmsg_type = UDP_SEGMENT;
			c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
			uint16_t gs = (uint16_t)q->msgs[start].len;
			memcpy(CMSG_DATA(c), &gs, sizeof(gs));
			h->msg_control = q->cmsg[nmm].buf;
			h->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
		}
		nmm++;
	}
	return nmm;
}

/* The route refused UDP GSO (e.g. no checksum offload): turn it off for good
 * and send this run's datagrams one by one, as wireguard-go does on EIO. */
static void send_run_unsegmented(dp_t *dp, const struct msghdr *h)
{
	atomic_store(&dp->udp_gso, 0);
	uint16_t gs;
	memcpy(&gs, CMSG_DATA((struct cmsghdr *)h->msg_control), sizeof(gs));
	uint8_t *p = h->msg_iov[0].iov_base;
	size_t left = h->msg_iov[0].iov_len;
	while (left) {
		size_t n = left < gs ? left : gs;
		if (sendto(dp->udp_fd, p, n, 0, h->msg_name, h->msg_namelen) < 0) {
			if (errno == EAGAIN && wait_writable(dp))
				continue;
			STAT_ADD(dp->st.tx_send_errors, 1);
		}
		p += n;
		left -= n;
	}
}

void udp_send_queued(dp_t *dp, struct udp_send_queue *q)
{
	int nmm = queue_to_mmsg(q, atomic_load(&dp->udp_gso));
	for (int sent = 0; sent < nmm;) {
		int r = sendmmsg(dp->udp_fd, q->mm + sent, nmm - sent, MSG_DONTWAIT);
		if (r > 0) {
			sent += r;
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
			if (!wait_writable(dp))
				break;
			continue;
		}
		if (errno == EINTR)
			continue;
		struct msghdr *h = &q->mm[sent].msg_hdr;
		if (h->msg_controllen && (errno == EIO || errno == EINVAL || errno == EOPNOTSUPP))
			send_run_unsegmented(dp, h);
		else
			STAT_ADD(dp->st.tx_send_errors, 1);
		sent++;
	}
	q->nmsgs = 0;
	q->used = 0;
	q->neps = 0;
}

int udp_send_one(dp_t *dp, const uint8_t *msg, size_t len, const struct sockaddr_storage *ep,
		 socklen_t eplen)
{
	while (sendto(dp->udp_fd, msg, len, MSG_DONTWAIT, (const struct sockaddr *)ep, eplen) < 0) {
		if (errno == EAGAIN || errno == EINTR) {
			struct pollfd pfd = {dp->udp_fd, POLLOUT, 0};
			if (poll(&pfd, 1, 200) > 0 || errno == EINTR)
				continue;
		}
		return -errno;
	}
	return 0;
}
