/* SPDX-License-Identifier: MIT
 *
 * offload.c -- the Linux offloads that make a userspace tunnel fast
 * (the same ideas as wireguard-go's tun/offload_linux.go):
 *
 *  - TX: with IFF_VNET_HDR + TUNSETOFFLOAD(TSO4|TSO6|CSUM[|USO]) the kernel
 *    hands us up to 64 KiB TCP/UDP "super-packets" described by a struct
 *    virtio_net_hdr (include/uapi/linux/virtio_net.h).  We cut them into
 *    gso_size segments, fixing IP lengths/ids, TCP sequence numbers/flags and
 *    the checksums the kernel left for us (VIRTIO_NET_HDR_F_NEEDS_CSUM).
 *  - RX: the reverse; in-order TCP segments of one flow from one receive
 *    batch are written to the device as one super-packet (gso_type TCPV4/6,
 *    NEEDS_CSUM), so the kernel's TCP stack sees a few big packets.
 *
 * Checksums: RFC 1071 one's complement sums computed over native-order
 * words; the result is byte-order independent when stored natively.
 */
#include <errno.h>
#include <linux/virtio_net.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

/* ---- checksums ---------------------------------------------------------- */

static inline uint64_t add64(uint64_t a, uint64_t b)
{
	a += b;
	return a + (a < b); /* end-around carry */
}

/* 32-bit words summed into a 64-bit accumulator: no carries to chase (a 64 KiB
 * buffer adds at most 2^14 words < 2^32 each), and a loop the compiler turns
 * into SIMD adds -- AVX2 where the CPU has it (an ifunc picks the clone at load
 * time).  Folding any such sum to 16 bits gives the RFC 1071 sum, since
 * 2^16 == 1 modulo 0xffff.  3.5x the speed (60 vs 17 GB/s) of the 64-bit
 * add-with-carry loop this replaced; checksums were 6% of both worker
 * threads' time before. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
	!defined(__SANITIZE_ADDRESS__)
#define CSUM_CLONES __attribute__((target_clones("avx2", "default"), optimize("O3")))
#else
#define CSUM_CLONES
#endif
CSUM_CLONES uint64_t csum_partial(const uint8_t *p, size_t len, uint64_t sum)
{
	uint64_t acc = 0;
	size_t words = len / 4;
	for (size_t i = 0; i < words; i++) {
		uint32_t w;
		memcpy(&w, p + 4 * i, 4);
		acc += w;
	}
	p += 4 * words;
	len -= 4 * words;
	if (len) { /* odd byte is the high byte of a zero-padded word */
		uint32_t w = 0;
		memcpy(&w, p, len);
		acc += w;
	}
	return add64(sum, acc);
}

static inline uint16_t csum_fold(uint64_t sum)
{
	uint64_t t = (sum & 0xffffffffULL) + (sum >> 32);
	t = (t & 0xffffffffULL) + (t >> 32);
	t = (t & 0xffff) + (t >> 16);
	t = (t & 0xffff) + (t >> 16);
	return (uint16_t)t;
}

uint16_t csum_fold_complement(uint64_t sum)
{
	return (uint16_t)~csum_fold(sum);
}

static inline uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}
static inline void put16(uint8_t *p, uint16_t v)
{
	p[0] = v >> 8;
	p[1] = v & 0xff;
}
static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put32(uint8_t *p, uint32_t v)
{
	put16(p, v >> 16);
	put16(p + 2, v & 0xffff);
}

/* A tag cut short leaves *type a tag's ethertype, which no caller takes for IP:
 * such a frame is carried as it is, like any other non-IP frame. */
int eth_l3_offset(const uint8_t *frame, size_t len, uint16_t *type)
{
	if (len < ETHERNET_HEADER_SIZE)
		return -1;
	size_t off = 12;
	*type = get16(frame + off);
	for (int tags = 0; tags < MAX_VLAN_TAGS && (*type == 0x8100 || *type == 0x88a8) &&
			   off + 4 + 2 <= len;
	     tags++) {
		off += 4;
		*type = get16(frame + off);
	}
	return (int)off + 2;
}

/* Pseudo-header sum (RFC 793 / RFC 8200 section 8.1) for an L4 length. */
static uint64_t pseudo_sum(const uint8_t *ip, bool v6, uint8_t proto, uint32_t l4len)
{
	uint8_t tail[8] = {0};
	if (v6) {
		put32(tail, l4len);
		tail[7] = proto;
		return csum_partial(tail, 8, csum_partial(ip + 8, 32, 0));
	}
	tail[1] = proto;
	put16(tail + 2, (uint16_t)l4len);
	return csum_partial(tail, 4, csum_partial(ip + 12, 8, 0));
}

static void ipv4_fix_csum(uint8_t *ip, int ihl)
{
	ip[10] = ip[11] = 0;
	uint16_t c = csum_fold_complement(csum_partial(ip, ihl, 0));
	memcpy(ip + 10, &c, 2);
}

static void store_l4_csum(uint8_t *at, uint64_t sum)
{
	uint16_t c = csum_fold_complement(sum);
	if (c == 0)
		c = 0xffff; /* CSUM_MANGLED_0: 0 means "no checksum" to UDP */
	memcpy(at, &c, 2);
}

/* ---- TX: segmentation ---------------------------------------------------- */

/* Below this a cut of up to 63 bytes would cost more messages than it saves. */
#define WHOLE_BLOCK_SEGMENT_MIN 1024

/* TCP payload per segment: gso_size, or a little less so that each segment
 * (the AEAD plaintext) is a whole number of ChaCha20 blocks.  OpenSSL's
 * ChaCha20-Poly1305 computes a trailing partial block in a call of its own,
 * which costs ~150 ns on a ~930 ns seal of 1424 bytes (the segment of a
 * 1420-byte MTU, padded); a 1408-byte segment seals in ~790 ns.  TCP takes
 * segments of any size, so this only moves where the cuts fall. */
static uint16_t tcp_segment_size(int hdrs, uint16_t gso_size)
{
	size_t whole = ((size_t)hdrs + gso_size) / CHACHA20_BLOCK_LEN * CHACHA20_BLOCK_LEN;
	if (whole < WHOLE_BLOCK_SEGMENT_MIN || whole <= (size_t)hdrs)
		return gso_size;
	return (uint16_t)(whole - (size_t)hdrs);
}

int gso_plan_init(struct gso_plan *g, const struct vnet_hdr *h, const uint8_t *pkt, size_t len,
		  int l3off)
{
	memset(g, 0, sizeof(*g));
	g->pkt = pkt;
	g->len = len;
	g->l3off = l3off;
	g->nseg = 1;
	int gso_type = h->gso_type & ~VIRTIO_NET_HDR_GSO_ECN;
	if (h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
		if ((size_t)h->csum_start + h->csum_offset + 2 > len)
			return -1;
		g->needs_csum = true;
		g->csum_start = h->csum_start;
		g->csum_offset = h->csum_offset;
	}
	if (gso_type == VIRTIO_NET_HDR_GSO_NONE)
		return 1;
	if (gso_type != VIRTIO_NET_HDR_GSO_TCPV4 && gso_type != VIRTIO_NET_HDR_GSO_TCPV6 &&
	    gso_type != VIRTIO_NET_HDR_GSO_UDP_L4)
		return -1;
	/* GSO always comes with NEEDS_CSUM and csum_start at the L4 header. */
	if (!g->needs_csum || h->gso_size == 0 || len < (size_t)l3off + 20)
		return -1;
	const uint8_t *ip = pkt + l3off;
	int cs = h->csum_start, iphl = cs - l3off;
	int version = ip[0] >> 4;
	if (version == 4) {
		if (gso_type == VIRTIO_NET_HDR_GSO_TCPV6 || (ip[0] & 0xf) * 4 != iphl || iphl < 20)
			return -1;
		g->l4proto = ip[9];
	} else if (version == 6) {
		if (gso_type == VIRTIO_NET_HDR_GSO_TCPV4 || iphl < 40)
			return -1;
		g->ipv6 = 1;
		g->l4proto = iphl == 40 ? ip[6] : (gso_type == VIRTIO_NET_HDR_GSO_UDP_L4 ? 17 : 6);
	} else {
		return -1;
	}
	int l4hl;
	if (gso_type == VIRTIO_NET_HDR_GSO_UDP_L4) {
		if (g->l4proto != IPPROTO_UDP || h->csum_offset != 6)
			return -1;
		l4hl = 8;
	} else {
		if (g->l4proto != IPPROTO_TCP || h->csum_offset != 16 || (size_t)cs + 20 > len)
			return -1;
		l4hl = (pkt[cs + 12] >> 4) * 4;
		if (l4hl < 20)
			return -1;
	}
	g->hdrs = cs + l4hl;
	if ((size_t)g->hdrs > len)
		return -1;
	size_t payload = len - g->hdrs;
	g->gso = gso_type;
	g->gso_size = g->l4proto == IPPROTO_TCP ? tcp_segment_size(g->hdrs, h->gso_size)
						: h->gso_size;
	g->nseg = payload ? (int)((payload + g->gso_size - 1) / g->gso_size) : 1;
	return g->nseg;
}

size_t gso_plan_segment(const struct gso_plan *g, int i, uint8_t *out)
{
	if (!g->gso) {
		memcpy(out, g->pkt, g->len);
		if (g->needs_csum)
			store_l4_csum(out + g->csum_start + g->csum_offset,
				      csum_partial(out + g->csum_start, g->len - g->csum_start, 0));
		return g->len;
	}
	size_t payload = g->len - g->hdrs, off = (size_t)i * g->gso_size;
	size_t seg = payload - off < g->gso_size ? payload - off : g->gso_size;
	if (!payload)
		seg = 0;
	memcpy(out, g->pkt, g->hdrs);
	memcpy(out + g->hdrs, g->pkt + g->hdrs + off, seg);
	uint8_t *ip = out + g->l3off, *l4 = out + g->csum_start;
	uint32_t l4len = (uint32_t)(g->hdrs - g->csum_start + seg);
	if (g->ipv6) {
		put16(ip + 4, (uint16_t)(g->hdrs - g->l3off - 40 + seg));
	} else {
		int ihl = g->csum_start - g->l3off;
		put16(ip + 2, (uint16_t)(g->hdrs - g->l3off + seg));
		put16(ip + 4, (uint16_t)(get16(ip + 4) + i)); /* one IP id per segment */
		ipv4_fix_csum(ip, ihl);
	}
	if (g->l4proto == IPPROTO_TCP) {
		put32(l4 + 4, get32(l4 + 4) + (uint32_t)off);
		if (i != g->nseg - 1)
			l4[13] &= ~(0x01 | 0x08); /* FIN, PSH only on the last segment */
		if (i != 0)
			l4[13] &= ~0x80; /* CWR only on the first */
		l4[16] = l4[17] = 0;
		store_l4_csum(l4 + 16, csum_partial(l4, l4len, pseudo_sum(ip, g->ipv6, 6, l4len)));
	} else {
		put16(l4 + 4, (uint16_t)l4len);
		l4[6] = l4[7] = 0;
		store_l4_csum(l4 + 6, csum_partial(l4, l4len, pseudo_sum(ip, g->ipv6, 17, l4len)));
	}
	return g->hdrs + seg;
}

/* ---- RX: coalescing ------------------------------------------------------ */

#define GRO_MAX_SEGS 64    /* per super-packet; keeps writev's iovec short */
#define GRO_OPEN_SCAN 16   /* open items searched for a flow */

struct gro_pkt {
	uint8_t *p;
	size_t len;
	int next;           /* next packet appended to the same item, -1 = none */
	int8_t kind;        /* tcp_parse(): 1 candidate, 0 TCP but not, -1 not TCP */
	bool csum_ok;       /* candidates only: the TCP checksum verified */
	uint8_t l3off;      /* tap: Ethernet header and VLAN tags; tun: 0 */
	uint8_t iphl, thl;
};

struct gro_item {
	int head, tail, nseg;
	bool open, psh;
	uint32_t total;    /* L3 length of the coalesced packet */
	uint32_t next_seq;
	uint16_t gso_size, last_seg;
	uint8_t iphl, thl;
};

struct gro_batch {
	struct gro_pkt *pkts;
	struct gro_item *items;
	int n, nitems, max;
	struct iovec iov[GRO_MAX_SEGS + 2];
};

struct gro_batch *gro_new(int max_pkts)
{
	struct gro_batch *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->pkts = calloc(max_pkts, sizeof(*b->pkts));
	b->items = calloc(max_pkts, sizeof(*b->items));
	b->max = max_pkts;
	if (!b->pkts || !b->items) {
		gro_free(b);
		return NULL;
	}
	return b;
}

void gro_free(struct gro_batch *b)
{
	if (!b)
		return;
	free(b->pkts);
	free(b->items);
	free(b);
}

void gro_reset(struct gro_batch *b)
{
	b->n = b->nitems = 0;
}

static int tcp_parse(const uint8_t *ip, size_t len, uint8_t *iphl, uint8_t *thl);
static bool tcp_csum_ok(const uint8_t *ip, size_t len, int iphl);

/* Classify the packet and verify a candidate's checksum now, right after
 * decryption, while it is still in L1 (at flush time a batch can be a couple
 * of hundred KiB). */
bool gro_add(struct gro_batch *b, uint8_t *pkt, size_t len, bool tap, bool coalesce)
{
	if (b->n == b->max)
		return false;
	struct gro_pkt *pk = &b->pkts[b->n++];
	*pk = (struct gro_pkt){pkt, len, -1, -1, false, 0, 0, 0};
	if (!coalesce)
		return true;
	int l3off = 0;
	if (tap) {
		uint16_t type;
		l3off = eth_l3_offset(pkt, len, &type);
		if (l3off < 0 || (type != 0x0800 && type != 0x86dd))
			return true;
	}
	pk->l3off = (uint8_t)l3off;
	pk->kind = (int8_t)tcp_parse(pkt + l3off, len - l3off, &pk->iphl, &pk->thl);
	if (pk->kind == 1)
		pk->csum_ok = tcp_csum_ok(pkt + l3off, len - l3off, pk->iphl);
	return true;
}

/* A TCP segment we know how to coalesce: IPv4 without options or fragments,
 * or IPv6 without extension headers; flags ACK or ACK|PSH; some payload.
 * Returns 1 candidate, 0 TCP but not a candidate, -1 not TCP. */
static int tcp_parse(const uint8_t *ip, size_t len, uint8_t *iphl, uint8_t *thl)
{
	if (len < 20)
		return -1;
	if (ip[0] >> 4 == 4) {
		if (ip[9] != IPPROTO_TCP)
			return -1;
		if ((ip[0] & 0xf) != 5 || (get16(ip + 6) & 0x3fff) || len < 40)
			return 0;
		*iphl = 20;
	} else if (ip[0] >> 4 == 6) {
		if (len < 60 || ip[6] != IPPROTO_TCP)
			return -1;
		*iphl = 40;
	} else {
		return -1;
	}
	const uint8_t *th = ip + *iphl;
	*thl = (th[12] >> 4) * 4;
	if (*thl < 20 || (size_t)*iphl + *thl > len)
		return 0;
	if ((th[13] & ~0x08) != 0x10 || (size_t)*iphl + *thl == len)
		return 0;
	return 1;
}

static bool same_flow(const struct gro_pkt *pa, const struct gro_pkt *pb)
{
	/* tap: MACs and VLAN tags.  Then addresses, ports and the ACK number:
	 * wireguard-go's flowKey, which treats a changed ACK as another flow
	 * (Linux GRO flushes on it too). */
	int iphl = pa->iphl;
	if (pb->iphl != iphl || pb->l3off != pa->l3off || memcmp(pa->p, pb->p, pa->l3off))
		return false;
	const uint8_t *a = pa->p + pa->l3off, *b = pb->p + pb->l3off;
	if (iphl == 20)
		return !memcmp(a + 12, b + 12, 8) && !memcmp(a + 20, b + 20, 4) &&
		       !memcmp(a + 28, b + 28, 4);
	return !memcmp(a + 8, b + 8, 32) && !memcmp(a + 40, b + 40, 4) &&
	       !memcmp(a + 48, b + 48, 4);
}

static bool tcp_csum_ok(const uint8_t *ip, size_t len, int iphl)
{
	uint32_t l4len = (uint32_t)(len - iphl);
	return csum_fold(csum_partial(ip + iphl, l4len, pseudo_sum(ip, iphl == 40, 6, l4len))) ==
	       0xffff;
}

static bool can_merge(const struct gro_batch *b, const struct gro_item *it,
		      const struct gro_pkt *pk, const uint8_t *ip, size_t len, uint8_t iphl,
		      uint8_t thl)
{
	const struct gro_pkt *head = &b->pkts[it->head];
	const uint8_t *h = head->p + head->l3off; /* same_flow(): same l3off */
	if (!it->open || iphl != it->iphl || thl != it->thl || it->nseg >= GRO_MAX_SEGS)
		return false;
	if (iphl == 20) {
		/* TOS, TTL, DF: what Linux inet_gro_receive() compares. */
		if (h[1] != ip[1] || h[8] != ip[8] || (h[6] & 0x40) != (ip[6] & 0x40))
			return false;
	} else if (memcmp(h, ip, 4) || h[7] != ip[7]) {
		return false; /* traffic class, flow label, hop limit */
	}
	const uint8_t *ht = h + iphl, *t = ip + iphl;
	if (memcmp(ht + 20, t + 20, thl - 20))
		return false; /* TCP options must be identical */
	uint32_t seg = (uint32_t)(len - iphl - thl);
	if (get32(t + 4) != it->next_seq || seg > it->gso_size || it->last_seg != it->gso_size)
		return false;
	if (it->total + seg > 65535)
		return false;
	return pk->csum_ok;
}

static int write_item(struct gro_batch *b, struct gro_item *it, int fd, bool vnet)
{
	struct gro_pkt *hp = &b->pkts[it->head];
	int l3off = hp->l3off; /* the same for every packet of the item (can_merge) */
	struct virtio_net_hdr vh;
	memset(&vh, 0, sizeof(vh));
	int n = 0;
	if (vnet)
		b->iov[n++] = (struct iovec){&vh, sizeof(vh)};
	b->iov[n++] = (struct iovec){hp->p, hp->len};
	if (it->nseg > 1) {
		uint8_t *ip = hp->p + l3off, *th = ip + it->iphl;
		int hdrs = it->iphl + it->thl;
		for (int i = hp->next; i >= 0; i = b->pkts[i].next)
			b->iov[n++] = (struct iovec){b->pkts[i].p + l3off + hdrs,
						     b->pkts[i].len - l3off - hdrs};
		if (it->iphl == 20) {
			put16(ip + 2, (uint16_t)it->total);
			ipv4_fix_csum(ip, 20);
		} else {
			put16(ip + 4, (uint16_t)(it->total - 40));
		}
		if (it->psh)
			th[13] |= 0x08;
		/* NEEDS_CSUM: the field holds the folded pseudo-header sum and
		 * the kernel completes it over the data (virtio spec 5.1.6.2). */
		uint16_t ps = csum_fold(pseudo_sum(ip, it->iphl == 40, 6, it->total - it->iphl));
		memcpy(th + 16, &ps, 2);
		vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
		vh.gso_type = it->iphl == 40 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4;
		vh.hdr_len = (uint16_t)(l3off + hdrs);
		vh.gso_size = it->gso_size;
		vh.csum_start = (uint16_t)(l3off + it->iphl);
		vh.csum_offset = 16;
	}
	return writev(fd, b->iov, n) < 0 ? -1 : 0;
}

/* Packet i onto the newest item of its flow, if that item is open and the
 * packet continues it: true if it did.  A packet that cannot join closes the
 * item, so that the flow's order holds. */
static bool join_open_item(struct gro_batch *b, int i)
{
	struct gro_pkt *pk = &b->pkts[i];
	uint8_t *ip = pk->p + pk->l3off;
	size_t len = pk->len - pk->l3off;
	uint8_t iphl = pk->iphl, thl = pk->thl;
	int kind = pk->kind; /* classified by gro_add() */
	if (kind == 0 && iphl == 0) {
		/* TCP we cannot even locate the ports of (IPv4 options or
		 * fragments): close every open item to keep order. */
		for (int j = 0; j < b->nitems; j++)
			b->items[j].open = false;
		return false;
	}
	if (kind < 0)
		return false;
	/* Find this flow's most recent open item. */
	int lo = b->nitems > GRO_OPEN_SCAN ? b->nitems - GRO_OPEN_SCAN : 0;
	for (int j = b->nitems - 1; j >= lo; j--) {
		struct gro_item *it = &b->items[j];
		if (!same_flow(&b->pkts[it->head], pk))
			continue;
		if (!it->open)
			return false; /* newest item of this flow is closed */
		if (kind == 1 && can_merge(b, it, pk, ip, len, iphl, thl)) {
			uint32_t seg = (uint32_t)(len - iphl - thl);
			b->pkts[it->tail].next = i;
			it->tail = i;
			it->nseg++;
			it->total += seg;
			it->next_seq += seg;
			it->last_seg = (uint16_t)seg;
			if (ip[iphl + 13] & 0x08) {
				it->psh = true;
				it->open = false;
			}
			return true;
		}
		it->open = false; /* keep the flow's order */
		return false;
	}
	return false;
}

/* A new item headed by packet i: open for more if it is a TCP segment
 * without PSH whose checksum was right. */
static void start_item(struct gro_batch *b, int i)
{
	const struct gro_pkt *pk = &b->pkts[i];
	const uint8_t *ip = pk->p + pk->l3off;
	size_t len = pk->len - pk->l3off;
	uint8_t iphl = pk->iphl, thl = pk->thl;
	struct gro_item *it = &b->items[b->nitems++];
	memset(it, 0, sizeof(*it));
	it->head = it->tail = i;
	it->nseg = 1;
	if (pk->kind == 1 && !(ip[iphl + 13] & 0x08) && pk->csum_ok) {
		uint32_t seg = (uint32_t)(len - iphl - thl);
		it->open = true;
		it->iphl = iphl;
		it->thl = thl;
		it->total = (uint32_t)len;
		it->gso_size = it->last_seg = (uint16_t)seg;
		it->next_seq = get32(ip + iphl + 4) + seg;
	}
}

int gro_flush(struct gro_batch *b, int fd, bool vnet, _Atomic uint64_t *coalesced)
{
	int errors = 0;
	b->nitems = 0;
	for (int i = 0; i < b->n; i++)
		if (!join_open_item(b, i))
			start_item(b, i);
	for (int j = 0; j < b->nitems; j++) {
		if (write_item(b, &b->items[j], fd, vnet) < 0)
			errors++;
		else if (b->items[j].nseg > 1)
			STAT_ADD(*coalesced, 1);
	}
	gro_reset(b);
	return errors;
}
