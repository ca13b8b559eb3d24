"""The public address of the WireGuard socket, from a STUN server (RFC 5389
Binding).

The request goes out of the WireGuard socket itself (a plane's send_datagram)
and the answer comes back through it (the plane's stun_listener), so the
mapping a NAT reports is the one it gives WireGuard's packets: a request from
another socket would learn another mapping. aioice's STUN codec builds and
parses the messages, and its transaction retransmits as RFC 5389 section 7.2.1
says: the first after 500 ms, each next after twice as long.

It answers Binding requests too, as an ICE agent answers connectivity checks
(RFC 8445 section 7.3): a fleet peer asks this host's WireGuard socket at a
direct candidate while their traffic goes through a relay, and an answer says
that the direct path works both ways (tunnel/fleet/agent.py)."""

import ipaddress
import struct
from collections.abc import Callable

from aioice import stun

from tunnel.protocol.address import Address, format_address

# Sends of one request: at 0, 0.5, 1.5, 3.5 and 7.5 s, failing at 15.5 s. A STUN
# server answers within a round trip; one that has not after five sends is not
# there, and the caller asks again later (RFC 5389's Rc of 7 would wait 39.5 s).
RETRANSMISSIONS = 4
SOFTWARE = "pyvpn"


class StunError(Exception):
    """No mapped address from a STUN server: no answer, or an error answer."""


class StunClient:
    """Binding requests out of one socket, matched to their answers by
    transaction ID. `send` sends a datagram out of the socket; received() takes
    every STUN message that arrives on it."""

    def __init__(self, send: Callable[[bytes, Address], None]) -> None:
        self._send = send
        self._transactions: dict[bytes, tuple[Address, stun.Transaction]] = {}

    def send_stun(self, message: stun.Message, destination: Address) -> None:
        """What aioice's transaction calls to send (and resend) its request."""
        self._send(bytes(message), destination)

    def received(self, data: bytes, source: Address) -> None:
        """A STUN message from the socket. A Binding request is answered with the
        address it came from; anything else but the answer to a request in flight,
        from the server it went to, is dropped: hostile bytes included."""
        try:
            message = stun.parse_message(data)
        except (ValueError, struct.error):
            return
        if message.message_class == stun.Class.REQUEST:
            if message.message_method == stun.Method.BINDING:
                self._answer(message, source)
            return
        pending = self._transactions.get(message.transaction_id)
        if pending is None or pending[0] != source:
            return
        if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            pending[1].response_received(message, source)

    def _answer(self, request: stun.Message, source: Address) -> None:
        # No larger than the request plus 12 bytes: no use to amplify with.
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = source
        self._send(bytes(response), source)

    async def mapped_address(
        self, server: Address, retransmissions: int = RETRANSMISSIONS
    ) -> Address:
        """The socket's address as `server` (an IP address and port) sees it.
        Raises StunError when it does not say."""
        # As the plane reports sources: the address in its one text form.
        server = (str(ipaddress.ip_address(server[0])), server[1])
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        # An attribute, so that a fleet peer's plane tells the request from
        # WireGuard's messages (protocol/stun.py wants a non-zero length).
        request.attributes["SOFTWARE"] = SOFTWARE
        transaction = stun.Transaction(request, server, self, retransmissions)
        self._transactions[request.transaction_id] = (server, transaction)
        where = format_address(server)
        try:
            response, _ = await transaction.run()
        except stun.TransactionTimeout:
            raise StunError(f"no answer from STUN server {where}") from None
        except stun.TransactionFailed as e:
            raise StunError(f"STUN server {where} refused: {e}") from None
        finally:
            del self._transactions[request.transaction_id]
        mapped = response.attributes.get("XOR-MAPPED-ADDRESS")
        if mapped is None:
            raise StunError(f"STUN server {where} answered without XOR-MAPPED-ADDRESS")
        return (str(mapped[0]), int(mapped[1]))
