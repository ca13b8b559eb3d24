/* SPDX-License-Identifier: MIT
 *
 * dp.h -- the narrow C API of pyvpn's native data plane.
 *
 * The split (docs/internals.md): Python runs the Noise handshake, the timers and the
 * configuration and decides every session key; this plane only moves
 * WireGuard transport messages (type 4) between the TUN/TAP device and the
 * UDP socket, in its own threads, without the GIL.  Everything it does not
 * handle itself goes up to Python over the control socket (see "upcalls").
 *
 * Threading: every function here may be called from any thread at any time
 * after dp_create() and before dp_destroy(); they serialise against the
 * workers with one reader/writer lock (workers are readers, configuration
 * calls are writers).
 *
 * Return values: 0 (or a count) on success, a negative errno on failure
 * (-ENOENT unknown peer, -EEXIST duplicate, -EINVAL bad argument,
 *  -ENOKEY no usable CURRENT keypair, -ENOMEM).
 */
#ifndef PYVPN_DP_H
#define PYVPN_DP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct dp dp_t;

enum { DP_TAP = 1, DP_VNET_HDR = 2 };                  /* dp_create flags */
/* With DP_VNET_HDR, a virtio_net_hdr of this size precedes every packet on the
 * device, both ways (Python writes one of zeros before its own). */
enum { DP_VNET_HDR_LEN = 10 };
enum { DP_CURRENT = 0, DP_PREVIOUS = 1, DP_NEXT = 2 }; /* keypair slots */

/* Control-channel upcalls: one SOCK_SEQPACKET message each, a 24-byte
 * struct dp_upcall_hdr followed by the payload. */
enum {
	DP_UPCALL_DATAGRAM = 1,          /* payload = the UDP datagram, addr = its source */
	DP_UPCALL_NEED_KEY = 2,          /* no payload: peer_id has packets staged and no
					  * usable CURRENT; once until a keypair is installed
					  * or cleared or the staged packets are purged */
	DP_UPCALL_KEYPAIR_CONFIRMED = 3, /* peer_id's NEXT became CURRENT: dp_peer_stats()
					  * tells which, also when this was lost */
	DP_UPCALL_ENDPOINT_CHANGED = 4,  /* addr = new endpoint of peer_id */
	DP_UPCALL_TOO_BIG = 5,           /* tap: payload = a device read (its virtio header
					  * too, with DP_VNET_HDR) of a frame over the MTU that
					  * may deserve an ICMP answer (tunnel/core/l2.py);
					  * Python answers it or hands it back whole with
					  * dp_transmit_frame */
	DP_UPCALL_UNROUTED = 6,          /* tun: payload = a packet no peer's allowed IPs
					  * cover (counted in tx_no_route); Python answers
					  * it with ICMP unreachable (tunnel/core/l3.py) */
	DP_UPCALL_EVENTS = 7,            /* no payload: peer_id has transport events for
					  * Python's timers: dp_peer_take_events() */
	DP_UPCALL_INITIATION = 8,        /* payload = struct dp_consumed_initiation, then
					  * the initiation; addr = its source (below) */
};

struct dp_upcall_hdr {
	uint8_t kind;
	uint8_t family;   /* AF_INET, AF_INET6 or 0 */
	uint16_t port;    /* big-endian */
	uint32_t peer_id; /* little-endian (host order on every Linux we build for) */
	uint8_t addr[16]; /* IPv4 in the first 4 bytes */
};

/* An initiation the handshake worker consumed (native/handshake.c): the
responder's Noise steps that depend only on the message, our static key and
the initiator's, done off Python's thread.  What is left depends on the peer
Python picks by remote_static: its replay and flood checks, the psk, the
response's empty AEAD, the indices.  Byte arrays only, so no padding: sizes
are KEY_SIZE, TIMESTAMP_SIZE and HASH_SIZE (tests/planes/test_shared_constants.py). */
enum { DP_INITIATION_CONSUMED = 0, DP_INITIATION_REFUSED = 1 }; /* status */
struct dp_consumed_initiation {
	uint8_t status;   /* REFUSED: it did not authenticate (or a DH was low order) */
	uint8_t admitted; /* Python admitted it already (dp_handshake_submit) */
	uint8_t pad[2];
	uint8_t remote_static[32];
	uint8_t timestamp[12];
	uint8_t hash[32];         /* H and C after the initiation (ConsumedInitiation) */
	uint8_t chaining_key[32];
	uint8_t response_ephemeral[32]; /* the response's, its private key forgotten */
	uint8_t response_hash[32];      /* H after mixing it in */
	uint8_t response_chaining_key[32]; /* C after its DH with e_i and s_i */
};

struct dp_peer_stats {
	uint64_t rx_bytes, tx_bytes;      /* UDP payload bytes of transport messages */
	uint64_t last_tx_ns, last_tx_data_ns; /* CLOCK_BOOTTIME; 0 = never */
	uint64_t last_rx_ns, last_rx_data_ns;
	uint64_t current_send_counter;    /* next counter CURRENT will use */
	uint64_t current_age_ns;          /* age of CURRENT since it was installed */
	uint32_t has_current;             /* CURRENT installed (usable or not) */
	uint32_t current_local_index;     /* CURRENT's, when has_current */
	uint32_t has_previous, has_next;
	uint32_t previous_local_index, next_local_index; /* when has_previous, has_next */
	uint32_t endpoint_len;            /* 0 = no endpoint */
	struct sockaddr_storage endpoint;
	/* Drops (and, for no_keypair/expired_keypair on the send side,
	 * packets staged for want of a usable CURRENT). */
	uint64_t drop_bad_tag, drop_replay, drop_bad_source;
	uint64_t drop_no_keypair, drop_expired_keypair, drop_malformed;
	uint64_t rx_packets, tx_packets;  /* transport messages */
	uint64_t rx_data_packets;         /* of rx_packets, those not keepalives: each
					   * may arm a keepalive (timers.c) */
	uint64_t staged_packets;          /* waiting for a usable CURRENT now */
	uint64_t staged_overflow;         /* dropped from a full staged queue: its oldest */
};

/* The transport messages of a peer since Python last took them, for its timers
 * (timers.c's hooks: data sent, data received, keepalives either way), and the
 * endpoint they came from. */
struct dp_peer_events {
	uint64_t tx_bytes, tx_data_messages, last_tx_ns; /* CLOCK_BOOTTIME; 0: none */
	uint64_t rx_bytes, rx_data_messages, last_rx_ns;
	uint32_t endpoint_len;
	struct sockaddr_storage endpoint;
};

struct dp_if_stats {
	uint64_t rx_unknown_index; /* type-4 message for no installed keypair */
	uint64_t rx_malformed;     /* too short / bad header */
	uint64_t tx_no_route;      /* device packet matching no allowed-ips / MAC */
	uint64_t tx_malformed;     /* device packet we could not parse/segment */
	uint64_t tx_send_errors;   /* sendmmsg failures (other than EAGAIN) */
	uint64_t upcalls_sent, upcalls_dropped; /* dropped: ctrl socket full */
	uint64_t dev_write_errors;
	uint64_t tx_super_packets; /* device reads that were TSO/USO super-packets */
	uint64_t rx_coalesced;     /* GRO super-packets written to the device */
	uint64_t rx_ratelimited;   /* datagrams kept from Python while it was behind:
				    * over their source's share (upcall.c) */
	uint64_t rx_bad_mac1;      /* handshake messages with a wrong mac1 */
	uint64_t rx_mac_table_full; /* tap frames whose source went unlearned: table full */
	uint32_t udp_gso, udp_gro, tun_offload; /* offloads in effect (bitmask for tun) */
	uint32_t workers, crypto_workers; /* dp_start's */
};

struct dp_mac_entry {
	uint8_t mac[6];
	uint16_t pad;
	uint32_t peer_id;
	uint64_t age_ms; /* since the MAC was last seen in an authenticated frame */
};

dp_t *dp_create(int dev_fd, int udp_fd, int ctrl_fd, uint32_t flags, int mtu);
/* The device's MTU changed (`ip link set mtu`): padding, and tap's answers to
 * frames too big, follow it.  -EINVAL outside 68..MAX_MTU, or without
 * DP_VNET_HDR above dp_create's MTU, which sized the device reads. */
int dp_set_mtu(dp_t *, int mtu);
/* Spawn `workers` (1..16) I/O worker threads.  Each serves both directions:
 * it polls the device and the UDP socket and runs one bounded batch of
 * whichever is ready (device -> UDP and UDP -> device), so one thread per
 * tunnel carries a TCP stream and its ACKs without waking another.
 * crypto_workers (0..MAX_CRYPTO_WORKERS): 0, the I/O workers seal and open
 * themselves; N, N threads beside them do it, and each peer's packets still
 * leave in the order they were read (pipeline.h). */
int dp_start(dp_t *, int workers, int crypto_workers);
void dp_stop(dp_t *);              /* join threads; idempotent */
/* The UDP fd now holds another socket (the caller dup2()ed a new one onto it
 * while stopped, for a new listen port): set it up as dp_create did.
 * -EBUSY while running. */
int dp_udp_replaced(dp_t *);
void dp_destroy(dp_t *);           /* stops, frees; does not close the fds */

int dp_peer_add(dp_t *, uint32_t peer_id);
int dp_peer_remove(dp_t *, uint32_t peer_id);
/* AF_INET or AF_INET6 sockaddr; an AF_INET one is mapped to ::ffff:a.b.c.d
 * when the UDP socket is AF_INET6. */
int dp_peer_set_endpoint(dp_t *, uint32_t peer_id, const struct sockaddr *sa, socklen_t len);
struct dp_prefix {
	int family;       /* AF_INET or AF_INET6 */
	uint8_t addr[16]; /* network order; AF_INET uses the first 4 bytes */
	uint8_t cidr;
};
/* Replace the peer's allowed IPs with these n prefixes, all under one write
 * lock: a packet in flight finds the old set or the new one, never neither.
 * Like WireGuard, a prefix another peer owns moves to this one.  Checked whole
 * before anything changes (-EINVAL); -ENOMEM midway leaves part of the new set. */
int dp_allowed_ips_set(dp_t *, uint32_t peer_id, const struct dp_prefix *prefixes, size_t n);

/* tap: the peer may send only from these n MAC addresses (6 bytes each), and
 * they are bound to it in the MAC table: never aged out, never taken by another
 * peer (the L2 form of allowed IPs).  n = 0: any source it is not refused. */
int dp_peer_set_allowed_macs(dp_t *, uint32_t peer_id, const uint8_t *macs, size_t n);

int dp_keypair_clear(dp_t *, uint32_t peer_id, int slot);
/* The only way keys come in: the kernel's add_new_keypair() (noise.c) in one
 * atomic step, with a send counter from 0, an empty replay window and a
 * birthdate of now.
 * initiator: previous := next ? next : current; current := new; next := none.
 * responder: next := new; previous := none.
 * -EKEYREJECTED: a keypair of the peer's holds that send key already (its
 * nonces would start again from 0); -EEXIST: the local index is in use. */
int dp_keypair_install(dp_t *, uint32_t peer_id, int initiator, uint32_t local_index,
		       uint32_t remote_index, const uint8_t send_key[32],
		       const uint8_t recv_key[32]);

/* Staging (the kernel's wg_packet_send_staged_packets): a packet for a peer
 * without a usable CURRENT waits in C, at most MAX_STAGED_PACKETS a peer (the
 * oldest dropped, counted in staged_overflow), and Python hears once that the
 * peer needs a key (DP_UPCALL_NEED_KEY).  The staged packets go, in order, at
 * the first send once CURRENT is usable: the keepalive Python asks for after a
 * handshake response (dp_send_packet), the first packet read for the peer, or,
 * for a responder, the confirmation of NEXT itself.
 *
 * Send one packet (tun: IP packet, tap: frame) behind any staged ones, each
 * encrypted with CURRENT, to the peer's endpoint from the calling thread.
 * len 0 is a keepalive (wg_packet_send_keepalive): sent only if nothing staged
 * goes in its place.  -ENOKEY: no usable CURRENT (missing, too old, counter
 * exhausted): the packet is staged; -EDESTADDRREQ: no endpoint (staged too). */
int dp_send_packet(dp_t *, uint32_t peer_id, const uint8_t *pkt, size_t len);
/* Drop the peer's staged packets: Python gave up handshaking (timers.c
 * wg_expired_retransmit_handshake purges them too). */
int dp_peer_purge_staged(dp_t *, uint32_t peer_id);

/* tap: a DP_UPCALL_TOO_BIG payload Python does not answer, switched, segmented
 * and checksummed as the device read it would have been, from the calling
 * thread (no TOO_BIG upcall this time). */
int dp_transmit_frame(dp_t *, const uint8_t *data, size_t len);

int dp_peer_stats(dp_t *, uint32_t peer_id, struct dp_peer_stats *out);
/* Take the peer's transport events (after DP_UPCALL_EVENTS, or at a tick for
 * the peers whose stats moved: a lost upcall loses no event). */
int dp_peer_take_events(dp_t *, uint32_t peer_id, struct dp_peer_events *out);
/* The peers whose dp_peer_stats() changed since this call last reported them
 * (the age of CURRENT aside, which always does), at most max: their ids in ids[],
 * their stats in out[]; the rest come in the next call.  A new peer counts as
 * last reported all zeros.  So a hub's timer tick reads what moved, not every
 * peer.  Returns how many. */
int dp_changed_peer_stats(dp_t *, uint32_t *ids, struct dp_peer_stats *out, size_t max);
int dp_if_stats(dp_t *, struct dp_if_stats *out);
int dp_mac_table(dp_t *, struct dp_mac_entry *out, int max); /* returns count */
int dp_mac_owner(dp_t *, const uint8_t mac[6], uint32_t *peer_id); /* 1: learned, live */
/* What learning a source MAC from an authenticated frame answers (dp_test_mac_learn). */
enum { DP_MAC_LEARNED, DP_MAC_HELD_BY_OTHER, DP_MAC_TABLE_FULL };
void dp_set_mac_ageing(dp_t *, uint32_t seconds);           /* tap; default 300 */
/* HASH(LABEL_MAC1 || our public key): from now on a handshake initiation or
 * response whose mac1 is wrong is dropped and counted in rx_bad_mac1 instead of
 * going up.  Until it is set, every one goes up. */
void dp_set_mac1_key(dp_t *, const uint8_t key[32]);

/* The handshake worker (native/handshake.c): initiations whose mac1 is right
 * are consumed off Python's thread and go up as DP_UPCALL_INITIATION.  It needs
 * our static private key, the chaining key every handshake starts from and
 * HASH(initial hash || our public key) (protocol/noise.py computes both); a
 * private key of zeros stops it (every initiation goes up as DP_UPCALL_DATAGRAM). */
void dp_set_static_key(dp_t *, const uint8_t private_key[32], const uint8_t chaining_key[32],
		       const uint8_t hash[32]);
/* Python's under-load decision (CLOCK_BOOTTIME ns, 0 = not): until then
 * initiations go up as DATAGRAM, for Python's cookie and rate-limit checks
 * before any public-key work, and come back through dp_handshake_submit. */
void dp_set_under_load(dp_t *, uint64_t until_ns);
/* An initiation Python admitted, for the worker to consume (its upcall says
 * admitted).  -ENOKEY: no static key; -EAGAIN: the queue is full (counted in
 * upcalls_dropped); -EINVAL: not an initiation's size. */
int dp_handshake_submit(dp_t *, const uint8_t *msg, size_t len, const struct sockaddr *sa,
			socklen_t salen);
/* The pipeline alone, no dp_t and no kernel I/O (`pyvpn bench --pipeline`):
 * seal and open `packets` packets of `size` bytes with `workers` crypto
 * workers, the calling thread making and releasing the slots; *ns: how long
 * it took, *cpu_ns: the CPU time the process spent meanwhile, all its threads.
 * 0, -EINVAL, -ENOMEM, or -EBADMSG if an open failed. */
int dp_bench_pipeline(int workers, int packets, int size, uint64_t *ns, uint64_t *cpu_ns);

#endif
