/* SPDX-License-Identifier: MIT
 *
 * device.c -- the life of a dp_t: taking over the fds Python opened (the
 * ioctls that turn the device's offloads on, each with a fallback when the
 * kernel refuses; the socket's are socket.c's), the worker threads,
 * interface-wide statistics.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "internal.h"
#include "pipeline.h"

#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20 /* Linux >= 6.2 */
#define TUN_F_USO6 0x40
#endif

int dp_udp_replaced(dp_t *dp)
{
	return dp->running ? -EBUSY : udp_setup(dp);
}

static int setup_device(dp_t *dp)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	if (ioctl(dp->dev_fd, TUNGETIFF, &ifr) == 0) {
		bool is_tap = (ifr.ifr_flags & IFF_TAP) == IFF_TAP;
		bool has_vnet = ifr.ifr_flags & IFF_VNET_HDR;
		if (is_tap != dp->tap || has_vnet != dp->vnet || !(ifr.ifr_flags & IFF_NO_PI))
			return -EINVAL; /* opened differently from what we were told */
		if (dp->vnet) {
			int sz = VNET_HDR_LEN;
			if (ioctl(dp->dev_fd, TUNSETVNETHDRSZ, &sz) < 0)
				return -errno;
			/* TSO needs CSUM; USO (UDP segmentation) is Linux >= 6.2. */
			static const unsigned tries[] = {
				TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
				TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, TUN_F_CSUM, 0};
			for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
				if (ioctl(dp->dev_fd, TUNSETOFFLOAD, tries[i]) == 0) {
					dp->tun_offload = tries[i];
					break;
				}
			}
		}
	} else if (errno != ENOTTY && errno != EINVAL && errno != EBADFD) {
		return -errno;
	} /* else: not a TUN/TAP fd -- a socketpair standing in for one in tests */
	int fl = fcntl(dp->dev_fd, F_GETFL);
	if (fl < 0 || fcntl(dp->dev_fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

int dp_set_mtu(dp_t *dp, int mtu)
{
	if (mtu < 68 || mtu > MAX_MTU || (!dp->vnet && mtu > dp->read_mtu))
		return -EINVAL;
	pthread_rwlock_wrlock(&dp->lock);
	dp->mtu = mtu;
	pthread_rwlock_unlock(&dp->lock);
	return 0;
}

dp_t *dp_create(int dev_fd, int udp_fd, int ctrl_fd, uint32_t flags, int mtu)
{
	if (dev_fd < 0 || udp_fd < 0 || ctrl_fd < 0 || mtu < 68 || mtu > MAX_MTU ||
	    (flags & ~(uint32_t)(DP_TAP | DP_VNET_HDR))) {
		errno = EINVAL;
		return NULL;
	}
	dp_t *dp = calloc(1, sizeof(*dp));
	if (!dp)
		return NULL;
	dp->dev_fd = dev_fd;
	dp->udp_fd = udp_fd;
	dp->ctrl_fd = ctrl_fd;
	dp->flags = flags;
	dp->mtu = dp->read_mtu = mtu;
	dp->tap = flags & DP_TAP;
	dp->vnet = flags & DP_VNET_HDR;
	atomic_init(&dp->mac_ageing_ns, DEFAULT_MAC_AGEING * 1000000000ULL);
	upcall_sources_init(dp);
	dp->handshakes = handshakes_new(dp);
	if (!dp->handshakes) {
		free(dp);
		errno = ENOMEM;
		return NULL;
	}
	pthread_rwlockattr_t a;
	pthread_rwlockattr_init(&a);
	pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&dp->lock, &a);
	pthread_rwlockattr_destroy(&a);
	pthread_mutex_init(&dp->mac_lock, NULL);
	pthread_mutex_init(&dp->report_lock, NULL);
	dp->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	int err = dp->stop_efd < 0 ? -errno : udp_setup(dp);
	if (!err)
		err = setup_device(dp);
	if (err) {
		dp_destroy(dp);
		errno = -err;
		return NULL;
	}
	return dp;
}

/* One worker: both directions in one thread.  Each pass runs one bounded
 * batch of each ready direction (TX: up to 16 device reads, RX: one recvmmsg
 * of 32), so a busy direction cannot starve the other.  A direction whose
 * last batch came back short is drained; poll() finds out when it has work
 * again, without blocking while the other direction is still busy.  On a
 * 2-core box this takes the ACK path's thread wakeups and context switches
 * out of a TCP stream. */
#define DEV_ERROR_BACKOFF_NS 10000000ULL /* device gone: stop polling it for 10 ms */

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	dp_t *dp = w->dp;
	bool dev_ready = false, udp_ready = false, dev_err = false;
	uint64_t dev_backoff_until = 0;
	while (!atomic_load(&dp->stopping)) {
		uint64_t freed = atomic_load(&dp->keypairs_freed);
		if (freed != w->keypairs_freed_seen) {
			/* At most a poll timeout (1 s) after the keypair went. */
			w->keypairs_freed_seen = freed;
			aead_forget(tx_aead(w->tx));
			aead_forget(rx_aead(w->rx));
		}
		if (!dev_ready || !udp_ready) {
			bool skip_dev = dev_backoff_until && now_ns() < dev_backoff_until;
			bool busy = dev_ready || udp_ready;
			struct pollfd pfd[3] = {{skip_dev || dev_ready ? -1 : dp->dev_fd, POLLIN, 0},
						{udp_ready ? -1 : dp->udp_fd, POLLIN, 0},
						{dp->stop_efd, POLLIN, 0}};
			int r = poll(pfd, 3, busy ? 0 : skip_dev ? 10 : 1000);
			if (r < 0 && !busy)
				continue;
			if (r > 0) {
				if (pfd[0].revents & (POLLIN | POLLERR | POLLHUP)) {
					dev_ready = true;
					dev_err = pfd[0].revents & (POLLERR | POLLHUP);
				}
				udp_ready |= (pfd[1].revents & POLLIN) != 0;
			}
		}
		if (dev_ready) {
			int n = tx_batch(w->tx);
			dev_ready = n == tx_batch_max(w->tx);
			/* Device gone down: don't spin on its POLLERR/POLLHUP. */
			dev_backoff_until = !n && dev_err ? now_ns() + DEV_ERROR_BACKOFF_NS : 0;
		}
		if (udp_ready)
			udp_ready = rx_batch(w->rx) == RX_MSGS_PER_BATCH;
	}
	return NULL;
}

int thread_spawn(pthread_t *thread, void *(*main)(void *), void *arg)
{
	/* Workers must not take Python's signals (SIGINT goes to the main thread). */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	int err = -pthread_create(thread, NULL, main, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return err;
}

static int start_io_workers(dp_t *dp)
{
	for (int i = 0; i < dp->nworkers; i++) {
		struct worker *w = &dp->workers[i];
		w->dp = dp;
		w->tx = tx_state_new(dp);
		w->rx = rx_state_new(dp);
		if (!w->tx || !w->rx)
			return -ENOMEM;
		int err = thread_spawn(&w->thread, worker_main, w);
		if (err)
			return err;
		w->started = true;
	}
	return 0;
}

int dp_start(dp_t *dp, int workers, int crypto_workers)
{
	if (workers < 1 || workers > 16 || crypto_workers < 0 ||
	    crypto_workers > MAX_CRYPTO_WORKERS)
		return -EINVAL;
	if (dp->running)
		return -EALREADY;
	uint64_t junk;
	while (read(dp->stop_efd, &junk, sizeof(junk)) > 0) /* re-arm after a stop */
		;
	atomic_store(&dp->stopping, 0);
	/* First, so that the I/O workers' rings (tx_state_new, rx_state_new) find it. */
	if (crypto_workers && !(dp->crypto = crypto_pool_start(crypto_workers, &dp->keypairs_freed)))
		return -ENOMEM;
	dp->workers = calloc(workers, sizeof(*dp->workers));
	if (!dp->workers) {
		crypto_pool_stop(dp->crypto);
		dp->crypto = NULL;
		return -ENOMEM;
	}
	dp->nworkers = workers;
	dp->running = true;
	int err = handshakes_start(dp->handshakes);
	if (!err)
		err = start_io_workers(dp);
	if (err)
		dp_stop(dp);
	return err;
}

void dp_stop(dp_t *dp)
{
	if (!dp || !dp->running)
		return;
	atomic_store(&dp->stopping, 1);
	uint64_t one = 1;
	if (write(dp->stop_efd, &one, sizeof(one)) < 0) {
		/* the stopping flag and the 1 s poll timeout still end them */
	}
	for (int i = 0; i < dp->nworkers; i++) {
		struct worker *w = &dp->workers[i];
		if (w->started)
			pthread_join(w->thread, NULL);
		tx_state_free(w->tx);
		rx_state_free(w->rx);
	}
	free(dp->workers);
	dp->workers = NULL;
	dp->nworkers = 0;
	handshakes_stop(dp->handshakes); /* after the workers, which hand it initiations */
	crypto_pool_stop(dp->crypto); /* last: the I/O workers' rings are released */
	dp->crypto = NULL;
	dp->running = false;
}

void dp_destroy(dp_t *dp)
{
	if (!dp)
		return;
	dp_stop(dp);
	pthread_rwlock_wrlock(&dp->lock);
	peers_free_all(dp);
	allowedips_free(dp);
	pthread_rwlock_unlock(&dp->lock);
	mac_free(dp);
	handshakes_free(dp->handshakes);
	pthread_rwlock_destroy(&dp->lock);
	pthread_mutex_destroy(&dp->mac_lock);
	pthread_mutex_destroy(&dp->report_lock);
	if (dp->stop_efd >= 0)
		close(dp->stop_efd);
	free(dp);
}

int dp_if_stats(dp_t *dp, struct dp_if_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->rx_unknown_index = STAT_GET(dp->st.rx_unknown_index);
	out->rx_malformed = STAT_GET(dp->st.rx_malformed);
	out->tx_no_route = STAT_GET(dp->st.tx_no_route);
	out->tx_malformed = STAT_GET(dp->st.tx_malformed);
	out->tx_send_errors = STAT_GET(dp->st.tx_send_errors);
	out->upcalls_sent = STAT_GET(dp->st.upcalls_sent);
	out->upcalls_dropped = STAT_GET(dp->st.upcalls_dropped);
	out->dev_write_errors = STAT_GET(dp->st.dev_write_errors);
	out->tx_super_packets = STAT_GET(dp->st.tx_super_packets);
	out->rx_coalesced = STAT_GET(dp->st.rx_coalesced);
	out->rx_ratelimited = STAT_GET(dp->st.rx_ratelimited);
	out->rx_bad_mac1 = STAT_GET(dp->st.rx_bad_mac1);
	out->rx_mac_table_full = STAT_GET(dp->st.rx_mac_table_full);
	out->udp_gso = (uint32_t)atomic_load(&dp->udp_gso);
	out->udp_gro = (uint32_t)dp->udp_gro;
	out->tun_offload = dp->tun_offload;
	out->workers = (uint32_t)dp->nworkers;
	out->crypto_workers = (uint32_t)crypto_pool_size(dp->crypto);
	return 0;
}

