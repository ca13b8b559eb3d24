"""Protocol constants, named as in the WireGuard whitepaper (section 5 and 6.1)
and drivers/net/wireguard/messages.h, and the limits pyvpn sets itself.

This module is the one source of every fact the C data plane shares with Python:
native/build.py writes the names in SHARED_WITH_C into native/constants.h when it
builds the extension (tests/planes/test_shared_constants.py checks C compiled with
them)."""

import os

# Testing aid: PYVPN_TIMER_SCALE=0.05 runs every protocol timer 20 times faster so
# a test sees rekeys within seconds. Never set it in production: both ends of a
# tunnel must agree on the timers.
TIMER_SCALE = float(os.environ.get("PYVPN_TIMER_SCALE", "1"))

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

# Message types (the first byte of every message).
MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

# Message sizes in bytes.
INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TAG_SIZE = 16
MAC_SIZE = 16  # mac1 and mac2 (messages.h COOKIE_LEN)
KEEPALIVE_SIZE = TRANSPORT_HEADER_SIZE + TAG_SIZE
# The handshake's fields (noise.h): X25519 keys, BLAKE2s hashes and chaining
# keys, and the TAI64N timestamp an initiation carries.
KEY_SIZE = 32
HASH_SIZE = 32
TIMESTAMP_SIZE = 12
MESSAGE_PADDING_MULTIPLE = 16

# Timers and limits (whitepaper section 6.1), seconds and message counts.
REKEY_AFTER_MESSAGES = 2**60
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
REKEY_AFTER_TIME = 120.0 * TIMER_SCALE
REJECT_AFTER_TIME = 180.0 * TIMER_SCALE
REKEY_ATTEMPT_TIME = 90.0 * TIMER_SCALE
REKEY_TIMEOUT = 5.0 * TIMER_SCALE
KEEPALIVE_TIMEOUT = 10.0 * TIMER_SCALE
COOKIE_SECRET_MAX_AGE = 120.0 * TIMER_SCALE
# A peer accepts at most one initiation per this interval (drivers/net/wireguard/noise.c).
INITIATIONS_PER_SECOND = 50
MAX_TIMER_HANDSHAKES = 90 // 5  # REKEY_ATTEMPT_TIME / REKEY_TIMEOUT
# Retransmitted initiations are jittered by up to a third of a second (timers.c).
REKEY_TIMEOUT_JITTER_MAX = 1 / 3 * TIMER_SCALE

# Anti-replay window (the kernel's receive.c): a ring of COUNTER_BITS_TOTAL bits of
# which one word (BITS_PER_LONG) is always being recycled.
COUNTER_BITS_TOTAL = 8192
COUNTER_REDUNDANT_BITS = 64
COUNTER_WINDOW_SIZE = COUNTER_BITS_TOTAL - COUNTER_REDUNDANT_BITS

# Packets held for a peer while its handshake is in flight (wireguard-go QueueStagedSize).
MAX_STAGED_PACKETS = 128

# UDP + IPv6 + WireGuard transport overhead: 1500 - 80 = 1420, wg-quick's default.
UNDERLAY_MTU = 1500
OVERHEAD_IPV6_UDP = 40 + 8
TUNNEL_OVERHEAD = OVERHEAD_IPV6_UDP + KEEPALIVE_SIZE
DEFAULT_MTU = UNDERLAY_MTU - TUNNEL_OVERHEAD
ETHERNET_HEADER_SIZE = 14
# 802.1Q and 802.1ad (QinQ) tags read before a frame's ethertype.
MAX_VLAN_TAGS = 2
DEFAULT_TAP_MTU = DEFAULT_MTU - ETHERNET_HEADER_SIZE
MIN_MTU = 576
MAX_MTU = 65535 - 128  # what native/device.c takes: headers still fit a 64 KiB buffer

# Handshake rate limiting when under load (drivers/net/wireguard/ratelimiter.c).
RATELIMIT_PACKETS_PER_SECOND = 20
RATELIMIT_BURST = 5
# ICMP errors pyvpn writes into its device (tunnel/core/l3.py), as Linux limits its own:
# net.ipv4.icmp_msgs_per_sec and icmp_msgs_burst (Documentation/networking/ip-sysctl.rst).
ICMP_ERRORS_PER_SECOND = 1000
ICMP_ERRORS_BURST = 50
# Initiations per second across the interface before we demand cookies; a hub's
# threshold is at least this many times its peers' rekey load (one handshake per
# peer per REKEY_AFTER_TIME), so that rekeys alone never ask every peer for a
# cookie round trip (10,000 peers rekey 83 times a second).
UNDER_LOAD_INITIATIONS_PER_SECOND = 64
UNDER_LOAD_REKEY_MARGIN = 2
# Under load for this long after the last sign of it, as wireguard-go stays (seconds).
UNDER_LOAD_HOLD = 1.0

# tap's learning switch: the ageing of a Linux bridge's forwarding database, and
# at most this many entries, so that a peer sending from ever new addresses cannot
# grow the table without bound (a new address then goes unlearned and is flooded).
DEFAULT_MAC_AGEING = 300
MAC_TABLE_MAX = 8192

# At start every peer with an endpoint gets an initiation, so that a peer that
# restarted is in session again within a round trip rather than after the other
# side's KEEPALIVE_TIMEOUT + REKEY_TIMEOUT; paced, so that a hub of thousands of
# peers does not send them all in one burst.
START_INITIATIONS_BURST = 50
START_INITIATIONS_PER_SECOND = 200

# How often the I/O shell runs the core's timers: WireGuard's shortest timer is
# hundreds of milliseconds.
TIMER_TICK = 0.1

# Threads that seal and open beside a native plane's I/O worker (`workers`,
# native/pipeline.c): a bound on a config's number, not a recommendation.
MAX_CRYPTO_WORKERS = 64

DEFAULT_PORT = 51820

# STUN (RFC 5389 section 6) on the WireGuard socket: every STUN message carries
# this cookie at bytes 4..7, after a 20-byte header whose length field counts the
# attributes that follow.
STUN_MAGIC_COOKIE = 0x2112A442
STUN_HEADER_SIZE = 20
# pyvpn extension: the first reserved header byte marks L2 (tap) messages.
MARKER_L2 = 0x01

# What native/constants.h holds: each as a C integer of the same name, and the
# timers in nanoseconds as NAME_NS.
SHARED_WITH_C = (
    "MESSAGE_INITIATION",
    "MESSAGE_RESPONSE",
    "MESSAGE_COOKIE_REPLY",
    "MESSAGE_TRANSPORT",
    "INITIATION_SIZE",
    "RESPONSE_SIZE",
    "COOKIE_REPLY_SIZE",
    "TRANSPORT_HEADER_SIZE",
    "TAG_SIZE",
    "MAC_SIZE",
    "KEEPALIVE_SIZE",
    "KEY_SIZE",
    "HASH_SIZE",
    "TIMESTAMP_SIZE",
    "MESSAGE_PADDING_MULTIPLE",
    "MARKER_L2",
    "REJECT_AFTER_MESSAGES",
    "COUNTER_BITS_TOTAL",
    "COUNTER_REDUNDANT_BITS",
    "COUNTER_WINDOW_SIZE",
    "MAX_STAGED_PACKETS",
    "ETHERNET_HEADER_SIZE",
    "MAX_VLAN_TAGS",
    "MAX_MTU",
    "RATELIMIT_PACKETS_PER_SECOND",
    "RATELIMIT_BURST",
    "ICMP_ERRORS_PER_SECOND",
    "ICMP_ERRORS_BURST",
    "DEFAULT_MAC_AGEING",
    "MAC_TABLE_MAX",
    "MAX_CRYPTO_WORKERS",
)
SHARED_WITH_C_NS = ("REJECT_AFTER_TIME", "UNDER_LOAD_HOLD", "TIMER_TICK")
