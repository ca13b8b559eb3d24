"""What the core asks of the I/O shell: each input (a datagram, a device packet, a
tick) returns a list of these, and a data plane carries them out in order."""

from dataclasses import dataclass

from tunnel.protocol.address import Address
from tunnel.protocol.keypair import Keypair
from tunnel.protocol.peer import Peer


@dataclass(frozen=True)
class Send:
    """Send a datagram on the UDP socket."""

    destination: Address
    data: bytes


@dataclass(frozen=True)
class Deliver:
    """Write a packet (tun) or frame (tap) into the device."""

    packet: bytes


@dataclass(frozen=True)
class SendBatch:
    """Send transport messages on the UDP socket, in order, to one destination:
    what a peer's staged packets became, one action for all of them."""

    destination: Address
    datagrams: list[bytes]


@dataclass(frozen=True)
class DeliverBatch:
    """Write packets or frames into the device, in order: the transport messages
    of one run of datagrams that passed every check."""

    packets: list[bytes]


@dataclass(frozen=True)
class Transmit:
    """Encrypt and send a packet (empty: a keepalive) with the peer's current
    keypair. Only with an external transport, which owns the send counters."""

    peer: Peer
    packet: bytes


@dataclass(frozen=True)
class KeypairInstalled:
    """A handshake produced a keypair; an external transport must install it with
    the same slot shuffle (Peer.install)."""

    peer: Peer
    keypair: Keypair


@dataclass(frozen=True)
class KeypairsCleared:
    """Every keypair of the peer is gone (key material zeroed)."""

    peer: Peer


@dataclass(frozen=True)
class StagedPurged:
    """The peer's staged packets are dropped: its handshake was given up. An
    external transport that stages packets itself drops its own."""

    peer: Peer


@dataclass(frozen=True)
class ConsumeInitiation:
    """An initiation admitted under load (cookie and rate limit), for an external
    handshake worker (the native plane's) to consume off this thread: it comes
    back through receive_consumed_initiation, marked admitted."""

    source: Address
    data: bytes


Action = (
    Send
    | Deliver
    | SendBatch
    | DeliverBatch
    | Transmit
    | KeypairInstalled
    | KeypairsCleared
    | StagedPurged
    | ConsumeInitiation
)
