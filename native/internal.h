/* SPDX-License-Identifier: MIT
 *
 * internal.h -- constants (with the whitepaper's names), the structures
 * shared by the files of the native plane, and their internal functions.
 */
#ifndef PYVPN_INTERNAL_H
#define PYVPN_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

#include <openssl/evp.h>

#include "constants.h"
#include "dp.h"

#ifndef SOL_UDP
#define SOL_UDP 17 /* = IPPROTO_UDP; glibc only defines it under some headers */
#endif
#ifndef VIRTIO_NET_HDR_GSO_UDP_L4
#define VIRTIO_NET_HDR_GSO_UDP_L4 5 /* Linux >= 4.18 uapi */
#endif

/* --- Protocol constants ------------------------------------------------
 * constants.h, generated from tunnel/protocol/constants.py (the one source of
 * what C and Python share), has the whitepaper's (section 6.1) and
 * messages.h's, and pyvpn's limits, under Python's names.  Only C's own
 * follow here. */
#define NOISE_SYMMETRIC_KEY_LEN 32
#define CHACHA20_BLOCK_LEN 64           /* RFC 8439 2.3 */

/* --- Sizes of the hot path -------------------------------------------- */
#define VNET_HDR_LEN DP_VNET_HDR_LEN /* sizeof(struct virtio_net_hdr) */
#define MAX_SUPER_PACKET 65535     /* biggest thing a TUN read / UDP GRO read gives */
#define TX_READS_PER_BATCH 16      /* device reads per wakeup (vnet: super-packets) */
#define TX_READS_PER_BATCH_PLAIN 128
#define RX_MSGS_PER_BATCH 32       /* recvmmsg vector length */
#define UDP_GSO_MAX_SEGS 64        /* kernel UDP_MAX_SEGMENTS */
#define UDP_GSO_MAX_BYTES 65000    /* a GSO send is one <64 KiB UDP datagram */
#define DP_SOURCE_BUCKET_BITS 12   /* 4096 buckets of sources while Python is behind */

/* CLOCK_BOOTTIME, as the kernel's WireGuard ages keypairs, so that
 * Reject-After-Time counts time spent suspended; Python's timers run on the
 * same clock (tunnel/host/clock.py). */
static inline uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* How long ago `then` was.  Signed: a worker samples `now` before it takes the
 * lock, so an entry made meanwhile is younger than `now` (a negative age), and
 * must not pass for 2^64 ns old. */
static inline int64_t age_ns(uint64_t now, uint64_t then)
{
	return (int64_t)(now - then);
}

#define STAT_ADD(field, n) atomic_fetch_add_explicit(&(field), (n), memory_order_relaxed)
#define STAT_SET(field, v) atomic_store_explicit(&(field), (v), memory_order_relaxed)
#define STAT_GET(field) atomic_load_explicit(&(field), memory_order_relaxed)

/* --- replay.c ---------------------------------------------------------- */
struct dp_replay {
	uint64_t counter; /* highest accepted counter + 1 */
	unsigned long backtrack[COUNTER_BITS_TOTAL / (8 * sizeof(unsigned long))];
};
void replay_init(struct dp_replay *r);
bool replay_validate(struct dp_replay *r, uint64_t their_counter); /* caller locks */

/* --- crypto.c ---------------------------------------------------------- */
/* One per thread and direction: an EVP context with the cipher bound once,
 * and which key it holds, so a message under the same key only sets the nonce
 * (re-keying through EVP costs ~50 ns a message for nothing). */
struct aead {
	EVP_CIPHER_CTX *ctx;
	uint64_t key_id; /* keypair key_id of the loaded key; 0: none */
};
int aead_init(struct aead *a, int encrypt); /* 0 or -1 */
void aead_free(struct aead *a);
/* Overwrite the key the context holds (with zeros): a freed keypair's key must
 * not live on in a worker's context until the next message under another. */
void aead_forget(struct aead *a);
/* mac1 of a handshake message: one per thread, its key given per call. */
struct mac1 {
	EVP_MAC_CTX *ctx;
};
int mac1_init(struct mac1 *m); /* 0 or -1 */
void mac1_free(struct mac1 *m);
/* Whether the message's mac1 (its second-last 16 bytes) is right under key. */
bool mac1_valid(struct mac1 *m, const uint8_t key[32], const uint8_t *msg, size_t len);
/* nonce = 4 zero bytes || u64 LE counter (WireGuard transport nonce). */
void aead_nonce(uint8_t nonce[12], uint64_t counter);
/* key_id names the key (struct keypair's); 0 loads it unconditionally. */
int aead_seal(struct aead *, const uint8_t key[32], uint64_t key_id, const uint8_t nonce[12],
	      const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len,
	      size_t pad /* zero bytes appended, <= 16 */,
	      uint8_t *out /* len + pad + 16, may equal in */);
int aead_open(struct aead *, const uint8_t key[32], uint64_t key_id, const uint8_t nonce[12],
	      const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len /* incl tag */,
	      uint8_t *out /* may equal in */);

/* --- peer.c: peers, keypairs, the index table ------------------------- */
struct peer;
/* One direction's transport messages since Python last took them (events.c). */
struct transport_events {
	_Atomic uint64_t bytes, data_messages, last_ns;
};
struct keypair {
	struct peer *peer;
	struct keypair *index_next; /* chain in the index hash table */
	uint32_t local_index, remote_index;
	uint64_t key_id; /* never reused: names the keys to an AEAD context */
	uint64_t birth_ns;
	_Atomic uint64_t send_counter;
	pthread_mutex_t replay_lock; /* several RX workers may validate at once */
	struct dp_replay replay;
	uint8_t send_key[NOISE_SYMMETRIC_KEY_LEN];
	uint8_t recv_key[NOISE_SYMMETRIC_KEY_LEN];
};

struct peer {
	uint32_t id;
	struct peer *hash_next;
	struct keypair *keypairs[3]; /* DP_CURRENT, DP_PREVIOUS, DP_NEXT */
	pthread_mutex_t endpoint_lock; /* roaming writes it under the read lock */
	struct sockaddr_storage endpoint;
	socklen_t endpoint_len;
	_Atomic uint64_t rx_bytes, tx_bytes, rx_packets, tx_packets, rx_data_packets;
	_Atomic uint64_t last_tx_ns, last_tx_data_ns, last_rx_ns, last_rx_data_ns;
	_Atomic uint64_t drop_bad_tag, drop_replay, drop_bad_source;
	_Atomic uint64_t drop_no_keypair, drop_expired_keypair, drop_malformed;
	/* tap: the only source MACs the peer may send from, bound to it in the
	 * MAC table (dp_peer_set_allowed_macs); none: any it is not refused. */
	uint8_t (*allowed_macs)[6];
	size_t n_allowed_macs;
	/* Its allowed IPs as last set, so that removing them walks their paths
	 * in the trie, not the whole trie of every peer's. */
	struct dp_prefix *prefixes;
	size_t n_prefixes;
	/* What dp_changed_peer_stats() last reported (NULL: nothing yet, all zeros),
	 * under dp->report_lock. */
	struct dp_peer_stats *reported;
	/* Packets waiting for a usable CURRENT (staged.c), oldest first, under
	 * staged_lock; the count is read without it. */
	pthread_mutex_t staged_lock;
	struct staged_packet *staged_head, *staged_tail;
	_Atomic uint32_t staged_count;
	_Atomic uint64_t staged_overflow;
	/* DP_UPCALL_NEED_KEY went up; no keypair came or went since. */
	_Atomic bool key_wanted;
	/* Transport events since Python last took them (events.c), whether
	 * DP_UPCALL_EVENTS rang for them, and when it last did. */
	struct transport_events ev_tx, ev_rx;
	_Atomic uint64_t ev_rung_ns;
	_Atomic bool ev_pending;
};

/* Sized for hubs of thousands of peers, each with up to three keypairs: a
 * transport message's index lookup walks a chain of a few, not dozens. */
#define PEER_HASH_BITS 12
#define INDEX_HASH_BITS 14
#define PEER_HASH_SIZE (1 << PEER_HASH_BITS)
#define INDEX_HASH_SIZE (1 << INDEX_HASH_BITS)
#define MAC_HASH_SIZE 1024

struct trie_node {
	struct trie_node *child[2];
	struct peer *peer; /* non-NULL when a prefix ends here */
};

struct mac_entry {
	struct mac_entry *next;
	uint8_t mac[6];
	uint32_t peer_id;
	uint64_t seen_ns;
	bool bound; /* one of its peer's allowed_macs: never ages, never moves,
		     * not under MAC_TABLE_MAX */
};

struct worker;
struct crypto_pool;

struct dp {
	int dev_fd, udp_fd, ctrl_fd;
	uint32_t flags;
	int mtu;      /* the device's: padding and tap's too-big answers (dp_set_mtu) */
	int read_mtu; /* dp_create's: without virtio headers, device reads are sized by it */
	int udp_family; /* AF_INET or AF_INET6: endpoints are stored in this family */
	bool tap, vnet;

	/* Workers hold it for reading per batch; configuration calls write.
	 * Writer-preferring so Python is never starved by busy workers. */
	pthread_rwlock_t lock;
	struct peer *peer_hash[PEER_HASH_SIZE];
	struct peer **peer_list; /* for flooding and stats; npeers entries */
	int npeers, peer_cap;
	struct keypair *index_hash[INDEX_HASH_SIZE];
	struct trie_node *trie4, *trie6;

	pthread_mutex_t mac_lock;
	pthread_mutex_t report_lock; /* dp_changed_peer_stats: one caller at a time */
	struct mac_entry *mac_hash[MAC_HASH_SIZE];
	int mac_learned; /* entries not bound: what MAC_TABLE_MAX caps */
	uint64_t mac_prune_due_ns; /* no learned entry expires before (prune_all) */
	_Atomic uint64_t mac_ageing_ns;

	/* Counts keypair_free() calls: a worker that sees it move forgets the keys
	 * its AEAD contexts hold (worker_main). */
	_Atomic uint64_t keypairs_freed;

	struct handshakes *handshakes; /* handshake.c */

	/* HASH(LABEL_MAC1 || our public key), for mac1 (dp_set_mac1_key). */
	uint8_t mac1_key[32];
	bool has_mac1_key;

	/* upcall.c: how many upcalls floods may cause.  When the next
	 * DP_UPCALL_UNROUTED is due; until when Python counts as behind; and, meanwhile,
	 * when each bucket of sources may send the next datagram up. */
	_Atomic uint64_t unrouted_due_ns;
	_Atomic uint64_t upcall_load_until_ns;
	uint64_t source_key4, source_key6;
	_Atomic uint64_t source_due_ns[1 << DP_SOURCE_BUCKET_BITS];

	/* Workers: the I/O workers, and the crypto workers beside them (pipeline.c;
	 * NULL: none, the I/O workers seal and open). */
	struct worker *workers;
	int nworkers;
	struct crypto_pool *crypto;
	bool running;
	_Atomic int stopping;
	int stop_efd; /* eventfd: wakes every worker's poll() on dp_stop() */

	/* Offloads in effect. */
	_Atomic int udp_gso; /* cleared at run time if the kernel refuses */
	int udp_gro;
	unsigned tun_offload;

	struct {
		_Atomic uint64_t rx_unknown_index, rx_malformed, tx_no_route, tx_malformed;
		_Atomic uint64_t tx_send_errors, upcalls_sent, upcalls_dropped, dev_write_errors;
		_Atomic uint64_t tx_super_packets, rx_coalesced, rx_ratelimited, rx_bad_mac1;
		_Atomic uint64_t rx_mac_table_full;
	} st;
};

struct peer *peer_lookup(dp_t *dp, uint32_t id);          /* lock held */
struct keypair *index_lookup(dp_t *dp, uint32_t local_index); /* lock held */
int keypair_slot(const struct keypair *kp);               /* slot of kp in its peer, or -1 */
/* Usable for sending: present, younger than Reject-After-Time, counter left.
 * Returns 0, -ENOKEY (missing) or -EKEYEXPIRED. */
int keypair_usable_for_send(const struct keypair *kp, uint64_t now);
/* RX: NEXT became confirmed; rotate if it is still NEXT. Takes the lock. */
bool peer_confirm_next(dp_t *dp, uint32_t peer_id, uint32_t local_index);
void peer_copy_endpoint(struct peer *p, struct sockaddr_storage *out, socklen_t *len);
void peers_free_all(dp_t *dp);

/* --- allowedips.c: longest-prefix match, one binary trie per family ---- */
int allowedips_insert(dp_t *dp, int family, const uint8_t *addr, uint8_t cidr,
		      struct peer *peer);
struct peer *allowedips_lookup(dp_t *dp, int family, const uint8_t *addr);
void allowedips_remove_peer(dp_t *dp, struct peer *peer);
void allowedips_free(dp_t *dp);

/* --- mactable.c: the tap learning switch ------------------------------- */
/* mac_learn() answers a DP_MAC_* (dp.h). */
int mac_learn(dp_t *dp, const uint8_t mac[6], uint32_t peer_id, uint64_t now);
bool mac_lookup(dp_t *dp, const uint8_t mac[6], uint64_t now, uint32_t *peer_id);
/* The learned entries at `now` (dp_mac_table's). */
int mac_table_at(dp_t *dp, uint64_t now, struct dp_mac_entry *out, int max);
void mac_forget_peer(dp_t *dp, uint32_t peer_id);
/* The peer's allowed_macs become its bound entries; what it held and may no
 * longer send from goes. */
void mac_bind_peer(dp_t *dp, const struct peer *p);
bool peer_allows_mac(const struct peer *p, const uint8_t mac[6]);
void mac_free(dp_t *dp);

/* --- staged.c: packets waiting for a session --------------------------- */
void staged_init(struct peer *p);
void staged_free(struct peer *p); /* drops what is staged */
/* Hold a copy of the packet for the peer; a full queue drops its oldest (counted
 * in staged_overflow). */
void staged_add(struct peer *p, const uint8_t *pkt, size_t len);
/* DP_UPCALL_NEED_KEY for the peer, unless Python knows already. */
void staged_need_key(dp_t *dp, struct peer *p);
/* Send the peer's staged packets under CURRENT, oldest first, from the calling
 * thread.  0: none left; -ENOKEY: CURRENT is not usable (the rest wait);
 * -EDESTADDRREQ: no endpoint; -ENOMEM.  Lock held (read). */
int staged_flush(dp_t *dp, struct peer *p, uint64_t now);
void staged_flush_peer(dp_t *dp, uint32_t peer_id); /* takes the lock */

/* --- events.c: transport events for Python's timers -------------------- */
/* A transport message of mlen bytes (data: not a keepalive) in p->ev_tx or
 * p->ev_rx. */
void events_add(dp_t *dp, struct peer *p, struct transport_events *ev, size_t mlen, bool data,
		uint64_t now);

/* --- upcall.c ---------------------------------------------------------- */
/* false: lost (the control socket is full), counted in upcalls_dropped. */
bool upcall_send(dp_t *dp, int kind, uint32_t peer_id, const struct sockaddr *sa,
		 const uint8_t *payload, size_t len);
void upcall_sources_init(dp_t *dp); /* dp_create: the keys of the sources' hash */
/* DP_UPCALL_UNROUTED, unless too many went up just now (the caller counts the
 * packet in tx_no_route either way). */
void upcall_unrouted(dp_t *dp, const uint8_t *pkt, size_t len, uint64_t now);
/* DP_UPCALL_DATAGRAM from src, unless its source has had its share while Python
 * is behind (counted in rx_ratelimited). */
void upcall_datagram(dp_t *dp, const struct sockaddr_storage *src, const uint8_t *d, size_t n,
		     uint64_t now);
/* Whether a datagram from src may go up now (its source's share while Python is
 * behind, counted in rx_ratelimited if not). */
bool upcall_source_allowed(dp_t *dp, const struct sockaddr_storage *src, uint64_t now);
/* An upcall lost for want of room: counted, and Python is behind for a while. */
void upcall_overflowed(dp_t *dp);

/* --- handshake.c: the handshake worker ------------------------------- */
struct handshakes;
struct handshakes *handshakes_new(dp_t *dp); /* dp_create; NULL: no memory */
int handshakes_start(struct handshakes *hs); /* dp_start */
void handshakes_stop(struct handshakes *hs); /* dp_stop */
void handshakes_free(struct handshakes *hs); /* dp_destroy */
/* A handshake message C admitted (well formed, its mac1 right): if an
 * initiation, for the worker while Python is not
 * under load: true if taken (queued, or dropped as over its source's share or
 * by a full queue), false if it goes up as DP_UPCALL_DATAGRAM.  Lock held (read). */
bool handshake_take(dp_t *dp, const struct sockaddr_storage *src, const uint8_t *d, size_t n,
		    uint64_t now);
int handshake_consume_once(const uint8_t private_key[KEY_SIZE],
			   const uint8_t chaining_key[HASH_SIZE], const uint8_t hash[HASH_SIZE],
			   const uint8_t *msg, const uint8_t ephemeral[KEY_SIZE],
			   struct dp_consumed_initiation *out);

/* --- offload.c: virtio_net_hdr, segmentation, coalescing, checksums ---- */
struct vnet_hdr {
	uint8_t flags;
	uint8_t gso_type;
	uint16_t hdr_len, gso_size, csum_start, csum_offset; /* host order (LE virtio) */
};
uint16_t csum_fold_complement(uint64_t sum);
uint64_t csum_partial(const uint8_t *p, size_t len, uint64_t sum);
/* tap: where a frame's L3 header starts, behind up to MAX_VLAN_TAGS tags,
 * with its ethertype in *type; -1 for less than an Ethernet header. */
int eth_l3_offset(const uint8_t *frame, size_t len, uint16_t *type);
/* Parse a device read into segments.  Returns the number of segments
 * (>= 1) or -1 if malformed.  gso_plan_segment() writes each. */
struct gso_plan {
	const uint8_t *pkt;
	size_t len;
	int l3off;          /* 0 for tun; tap: eth_l3_offset() */
	int nseg;
	int gso;            /* 0: plain packet (maybe needing a checksum) */
	bool needs_csum;
	uint16_t csum_start, csum_offset;
	int hdrs;           /* bytes of headers copied into each segment */
	int l4proto;        /* 6 TCP, 17 UDP */
	int ipv6;
	uint16_t gso_size;
};
int gso_plan_init(struct gso_plan *g, const struct vnet_hdr *h, const uint8_t *pkt,
		  size_t len, int l3off);
/* Write segment i to out (room for MAX_SUPER_PACKET); returns its length. */
size_t gso_plan_segment(const struct gso_plan *g, int i, uint8_t *out);

/* GRO on the way into the device: collect decrypted packets of one RX batch,
 * then write them (coalesced TCP where possible) in order. */
struct gro_batch;
struct gro_batch *gro_new(int max_pkts);
void gro_free(struct gro_batch *);
void gro_reset(struct gro_batch *);
/* false: full, flush first.  tap: pkt is an Ethernet frame.  coalesce: a
 * candidate for a super-packet (the device takes virtio headers). */
bool gro_add(struct gro_batch *, uint8_t *pkt, size_t len, bool tap, bool coalesce);
/* Writes everything; returns number of write errors. */
int gro_flush(struct gro_batch *, int fd, bool vnet, _Atomic uint64_t *coalesced);

/* --- socket.c: the UDP socket, in batches ------------------------------ */
int udp_setup(dp_t *dp); /* dp_create, dp_udp_replaced: 0 or a negative errno */

/* One recvmmsg's worth: RX_MSGS_PER_BATCH buffers, each maybe a UDP GRO train
 * of equal-size datagrams from one source (src[i]). */
struct udp_recv_batch {
	uint8_t *bufs[RX_MSGS_PER_BATCH];
	struct mmsghdr mm[RX_MSGS_PER_BATCH];
	struct iovec iov[RX_MSGS_PER_BATCH];
	struct sockaddr_storage src[RX_MSGS_PER_BATCH];
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cmsg[RX_MSGS_PER_BATCH];
};
int udp_recv_batch_init(struct udp_recv_batch *); /* 0 or -ENOMEM; free it either way */
void udp_recv_batch_free(struct udp_recv_batch *);
/* One recvmmsg, without waiting: how many buffers it filled (0: none). */
int udp_receive(dp_t *dp, struct udp_recv_batch *);
/* The size of the datagrams buffer i's GRO train is cut into (its whole length
 * if it holds one datagram). */
size_t udp_segment_size(struct udp_recv_batch *, int i);

#define UDP_SEND_ARENA_SIZE (2u << 20)
#define UDP_SEND_MAX_MSGS 4096
#define UDP_SEND_MAX_EPS 64
/* Transport messages waiting for one sendmmsg: send.c seals them back to back
 * into the arena, each naming one of the endpoints; udp_send_queued() sends
 * them and empties the queue. */
struct udp_queued {
	uint32_t off, len;
	int ep; /* index in eps */
};
struct udp_send_queue {
	uint8_t *arena;
	size_t used;
	struct udp_queued *msgs;
	int nmsgs;
	struct sockaddr_storage eps[UDP_SEND_MAX_EPS];
	socklen_t eplens[UDP_SEND_MAX_EPS];
	int neps;
	struct mmsghdr *mm;
	struct iovec *iov;
	union {
		char buf[CMSG_SPACE(sizeof(uint16_t))];
		struct cmsghdr align;
	} *cmsg;
};
int udp_send_queue_init(struct udp_send_queue *); /* 0 or -ENOMEM; free it either way */
void udp_send_queue_free(struct udp_send_queue *);
/* Send every queued message, and empty the queue.  Touches no peer, so it may
 * run without dp->lock. */
void udp_send_queued(dp_t *dp, struct udp_send_queue *);
/* One message from the calling thread, waiting while the socket is full:
 * 0 or a negative errno. */
int udp_send_one(dp_t *dp, const uint8_t *msg, size_t len, const struct sockaddr_storage *ep,
		 socklen_t eplen);

/* --- send.c / receive.c: the two directions, device.c: the workers ---- */
/* pthread_create with every signal blocked in the new thread: 0 or -errno. */
int thread_spawn(pthread_t *thread, void *(*main)(void *), void *arg);
/* One thread serving both directions: device.c worker_main says how. */
struct worker {
	dp_t *dp;
	pthread_t thread;
	bool started;
	struct tx_state *tx;
	struct rx_state *rx;
	uint64_t keypairs_freed_seen;
};
struct tx_state *tx_state_new(dp_t *dp);
void tx_state_free(struct tx_state *);
int tx_batch(struct tx_state *);           /* device reads done; 0 = none */
int tx_batch_max(const struct tx_state *); /* fewer reads than this: drained */
struct aead *tx_aead(struct tx_state *);
/* One transport message at out (room: 16 + len + 15 + 16) sealed under kp with
 * its next counter; `in` may be out + 16.  Its length, or 0: kp's counter ran
 * out (or the AEAD failed). */
size_t message_build(dp_t *dp, struct aead *aead, struct keypair *kp, const uint8_t *in,
		     size_t len, uint8_t *out);
/* A transport message of mlen bytes (plain_len of them data) went to the peer. */
void account_tx(dp_t *dp, struct peer *p, size_t mlen, size_t plain_len, uint64_t now);
struct rx_state *rx_state_new(dp_t *dp);
void rx_state_free(struct rx_state *);
int rx_batch(struct rx_state *); /* datagrams received; < RX_MSGS_PER_BATCH: drained */
struct aead *rx_aead(struct rx_state *);

#endif
