"""What a config or `wg set` says about one peer. Apart from peer.py so that
reading a config does not load the crypto stack that a peer's state needs."""

from dataclasses import dataclass, field

from .address import Address
from .allowed_ips import Network


@dataclass
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: Address | None = None
    allowed_ips: list[Network] = field(default_factory=list)
    persistent_keepalive: int = 0
    # tap: the only source MAC addresses the peer may send from, bound to it.
    allowed_macs: list[bytes] = field(default_factory=list)
    # (host name, port) when the endpoint was given by name: resolved again while
    # handshakes fail (tunnel/control/reresolve.py).
    endpoint_name: Address | None = None
