"""cffi builder (API mode) for pyvpn's native data plane, `tunnel._native`.

Used by setup.py (``cffi_modules=["native/build.py:ffibuilder"]``) so that
``pip install -e .`` compiles it, and by the memory-safety test, which calls
``make_ffibuilder(asan=True).compile(tmpdir=...)`` for an AddressSanitizer
build.  PYVPN_ASAN=1 in the environment selects that build here too.
"""

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = [
    "device.c",
    "send.c",
    "receive.c",
    "peer.c",
    "allowedips.c",
    "mactable.c",
    "replay.c",
    "crypto.c",
    "offload.c",
    "upcall.c",
]

# The public part of dp.h, as cffi needs it ("..." lets the C compiler fill in
# layout details cffi cannot see, such as sockaddr_storage).
CDEF = """
typedef int... socklen_t;
struct sockaddr { ...; };
struct sockaddr_storage { ...; };
typedef struct dp dp_t;
enum { DP_TAP = 1, DP_VNET_HDR = 2 };
enum { DP_CURRENT = 0, DP_PREVIOUS = 1, DP_NEXT = 2 };
enum { DP_UPCALL_DATAGRAM = 1, DP_UPCALL_NEED_KEY = 2,
       DP_UPCALL_KEYPAIR_CONFIRMED = 3, DP_UPCALL_ENDPOINT_CHANGED = 4,
       DP_UPCALL_TOO_BIG = 5 };
struct dp_upcall_hdr { uint8_t kind; uint8_t family; uint16_t port; uint32_t peer_id;
                       uint8_t addr[16]; };
struct dp_peer_stats {
    uint64_t rx_bytes, tx_bytes;
    uint64_t last_tx_ns, last_tx_data_ns;
    uint64_t last_rx_ns, last_rx_data_ns;
    uint64_t current_send_counter;
    uint64_t current_age_ns;
    uint32_t has_current;
    uint32_t has_previous, has_next;
    uint32_t endpoint_len;
    struct sockaddr_storage endpoint;
    uint64_t drop_bad_tag, drop_replay, drop_bad_source;
    uint64_t drop_no_keypair, drop_expired_keypair, drop_malformed;
    uint64_t rx_packets, tx_packets;
};
struct dp_if_stats {
    uint64_t rx_unknown_index, rx_malformed, tx_no_route, tx_malformed;
    uint64_t tx_send_errors, upcalls_sent, upcalls_dropped, dev_write_errors;
    uint64_t tx_super_packets, rx_coalesced;
    uint32_t udp_gso, udp_gro, tun_offload, workers;
};
struct dp_mac_entry { uint8_t mac[6]; uint16_t pad; uint32_t peer_id; uint64_t age_ms; };

dp_t *dp_create(int dev_fd, int udp_fd, int ctrl_fd, uint32_t flags, int mtu);
int dp_start(dp_t *, int workers);
void dp_stop(dp_t *);
void dp_destroy(dp_t *);
int dp_peer_add(dp_t *, uint32_t peer_id);
int dp_peer_remove(dp_t *, uint32_t peer_id);
int dp_peer_set_endpoint(dp_t *, uint32_t peer_id, const struct sockaddr *sa, socklen_t len);
int dp_allowed_ip_add(dp_t *, uint32_t peer_id, int family, const uint8_t *addr, uint8_t cidr);
int dp_allowed_ips_clear(dp_t *, uint32_t peer_id);
int dp_keypair_set(dp_t *, uint32_t peer_id, int slot, uint32_t local_index,
                   uint32_t remote_index, const uint8_t send_key[32], const uint8_t recv_key[32]);
int dp_keypair_clear(dp_t *, uint32_t peer_id, int slot);
int dp_keypair_move(dp_t *, uint32_t peer_id, int from_slot, int to_slot);
int dp_keypair_install(dp_t *, uint32_t peer_id, int initiator, uint32_t local_index,
                       uint32_t remote_index, const uint8_t send_key[32],
                       const uint8_t recv_key[32]);
int dp_send_packet(dp_t *, uint32_t peer_id, const uint8_t *pkt, size_t len);
int dp_peer_stats(dp_t *, uint32_t peer_id, struct dp_peer_stats *out);
int dp_if_stats(dp_t *, struct dp_if_stats *out);
int dp_mac_table(dp_t *, struct dp_mac_entry *out, int max);
void dp_set_mac_ageing(dp_t *, uint32_t seconds);

int dp_test_aead_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                      size_t aad_len, const uint8_t *pt, size_t len, uint8_t *out);
int dp_test_aead_open(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                      size_t aad_len, const uint8_t *ct, size_t len, uint8_t *out);
typedef struct dp_replay dp_replay_t;
dp_replay_t *dp_test_replay_new(void);
int dp_test_replay_check(dp_replay_t *, uint64_t counter);
void dp_test_replay_free(dp_replay_t *);
uint64_t dp_test_replay_window_size(void);
"""


def make_ffibuilder(asan: bool | None = None) -> FFI:
    """Return an FFI builder; ``asan`` adds AddressSanitizer instrumentation."""
    if asan is None:
        asan = os.environ.get("PYVPN_ASAN") == "1"
    cflags = ["-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
              "-fno-strict-aliasing", "-pthread", "-D_GNU_SOURCE"]
    ldflags = ["-pthread"]
    if asan:
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    # Relative paths when building from the repo root (setuptools wants them),
    # absolute ones otherwise (the ASAN test compiles from a temp dir).
    base = HERE
    if Path.cwd().resolve() == HERE.parent:
        base = Path("native")
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "tunnel._native",
        '#include "dp.h"\n',
        sources=[str(base / s) for s in SOURCES],
        include_dirs=[str(base)],
        libraries=["crypto"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return ffi


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
