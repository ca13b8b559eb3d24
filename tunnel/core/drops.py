"""Why the interface dropped a packet or message, as a value (boringtun's
TunnResult errors): a misspelt reason is an AttributeError, not a new counter.
Each value is the reason's key in `pyvpn show --json` and `pyvpn metrics`. A
peer's own drops (bad source, replay) are its DropCounters (protocol/peer.py)."""

from enum import StrEnum


class Drop(StrEnum):
    # Datagrams from the socket.
    MALFORMED = "malformed"  # no message of any type, or cut short
    UNKNOWN_INDEX = "unknown_index"  # for no session or handshake of ours
    BAD_MAC1 = "bad_mac1"  # a handshake message not meant for our public key
    RATELIMITED = "ratelimited"  # a source over its share of handshakes
    NO_PRIVATE_KEY = "no_private_key"  # an initiation while we have no identity
    BAD_HANDSHAKE = "bad_handshake"  # failed to authenticate or decrypt
    UNKNOWN_PEER = "unknown_peer"  # an initiation from a public key we do not know
    HANDSHAKE_FLOOD = "handshake_flood"  # a peer's initiations over INITIATIONS_PER_SECOND
    REPLAYED_INITIATION = "replayed_initiation"  # a TAI64N stamp not newer than the last
    BAD_COOKIE = "bad_cookie"  # a cookie reply that does not decrypt
    MODE_MISMATCH = "mode_mismatch"  # a handshake from a peer of the other mode (tun/tap)
    MAC_TABLE_FULL = "mac_table_full"  # tap: a frame whose source went unlearned
    # Packets and frames from the device.
    NO_ROUTE = "no_route"  # no peer's allowed IPs (tun) or no peer at all (tap)
    # tap: shorter than an Ethernet header (the native plane: any C cannot parse)
    RUNT_FRAME = "runt_frame"
    FRAME_TOO_BIG = "frame_too_big"  # tap: over the MTU, answered with ICMP
    # The native plane: datagrams C could not hand up, the control socket full.
    UPCALL_OVERFLOW = "upcall_overflow"
