"""Packets from the device toward peers (the kernel's send.c): routing a packet
or switching a frame to its peers, staging it while a handshake is in flight,
encrypting it, and sending initiations and keepalives."""

from tunnel.protocol.constants import ETHERNET_HEADER_SIZE, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX
from tunnel.protocol.keypair import pad
from tunnel.protocol.peer import Peer
from tunnel.protocol.tai64n import tai64n

from . import l3
from .actions import Action, Deliver, Send, SendBatch, Transmit
from .l2 import frame_targets, too_big_reply
from .state import State, log, short


class Sending(State):
    def send_packet(self, packet: bytes, now: float) -> list[Action]:
        """A packet (tun) or frame (tap) read from the device."""
        return self.send_packets([packet], now)

    def send_packets(self, packets: list[bytes], now: float) -> list[Action]:
        """Packets (tun) or frames (tap) read from the device in one go, in order.
        Each is staged for its peers, then each peer's staged packets go at once:
        one seal loop, and the timers and counters moved once for them all."""
        actions: list[Action] = []
        touched: dict[Peer, None] = {}  # the peers given packets, in order
        # Routing and switching tables do not change while a batch is read, and
        # a batch is mostly one flow: each destination is looked up once.
        targets_of: dict[bytes, list[Peer]] = {}
        for packet in packets:
            if self.l2:
                if len(packet) < ETHERNET_HEADER_SIZE:
                    self.drops["runt_frame"] += 1
                    continue
                # What gets no answer goes anyway: the underlay fragments it.
                answer = self.answer_too_big(packet)
                if answer is not None:
                    actions += answer
                    continue
                macs = packet[:12]
                targets = targets_of.get(macs)
                if targets is None:
                    targets = frame_targets(self.macs, self.peers.values(), packet, now)
                    targets_of[macs] = targets
            else:
                header = l3.parse_ip(packet)
                if header is None:
                    targets = []
                else:
                    # An address's length tells its version: it is key enough.
                    version, _, destination, _ = header
                    targets = targets_of.get(destination)
                    if targets is None:
                        owner = self.routes.lookup(version, destination)
                        targets = targets_of[destination] = [owner] if owner else []
                if not targets:
                    self.drops["no_route"] += 1
                    actions += self.unreachable(packet, now)
                    continue
            for peer in targets:
                if len(peer.staged) == peer.staged.maxlen:
                    actions += self._flush_staged(peer, now)  # room first, if it can go
                self._hold(peer, packet)
                touched[peer] = None
        for peer in touched:
            actions += self._flush_staged(peer, now)
        return actions

    def answer_too_big(self, frame: bytes) -> list[Action] | None:
        """tap: the answer a router would give a frame too big for the tunnel
        (core/l2.py), or None where there is none to give."""
        if len(frame) - ETHERNET_HEADER_SIZE <= self.mtu:
            return None
        reply = too_big_reply(frame, self.mtu)
        if reply is None:
            return None
        self.drops["frame_too_big"] += 1
        return [Deliver(reply)]

    def unreachable(self, packet: bytes, now: float) -> list[Action]:
        """tun: the ICMP error for a packet no peer's allowed IPs cover (core/l3.py),
        at most ICMP_ERRORS_PER_SECOND of them, as Linux limits its own."""
        reply = l3.unreachable(packet)
        if reply is None or not self.icmp_limiter.allow("", now):
            return []
        return [Deliver(reply)]

    def stage(self, peer: Peer, packet: bytes, now: float) -> list[Action]:
        """Queue a packet for the peer and send what can be sent."""
        self._hold(peer, packet)
        return self._flush_staged(peer, now)

    def need_key(self, peer: Peer, packet: bytes, now: float) -> list[Action]:
        """An external transport refused to send the packet: it holds no usable
        keypair for the peer (gone, too old or worn out by its own clock and
        counters). The packet waits for a new handshake, as send.c's
        wg_packet_send_staged_packets starts one for a packet without a keypair."""
        self._hold(peer, packet)
        return self._initiate(peer, now, retry=False)

    def _hold(self, peer: Peer, packet: bytes) -> None:
        """Stage the packet; a full queue drops its oldest, counted."""
        if len(peer.staged) == peer.staged.maxlen:
            peer.drops.staged_overflow += 1
        peer.staged.append(packet)

    def transport_sent(self, peer: Peer, size: int, is_data: bool, now: float) -> list[Action]:
        """Transport bytes went to the peer; sending data may call for a rekey."""
        self._count_tx(peer, size, now)
        peer.timers.any_authenticated_sent(now, is_data)
        if not is_data:
            return []
        peer.timers.data_sent(now)
        return self._initiate(peer, now, retry=False) if peer.needs_rekey(now) else []

    def _flush_staged(self, peer: Peer, now: float) -> list[Action]:
        keypair = peer.current
        if keypair is None or keypair.expired(now) or peer.endpoint is None:
            return self._initiate(peer, now, retry=False)
        staged = peer.staged
        if not staged:
            return []
        if self.external_transport:
            transmits: list[Action] = [Transmit(peer, packet) for packet in staged]
            staged.clear()
            return transmits
        packets = list(staged)
        staged.clear()
        if self.l2:
            datagrams = keypair.seal(packets, True)
        else:
            mtu = self.mtu
            datagrams = keypair.seal([pad(packet, mtu) for packet in packets])
        # Every event below happens at `now`, so once for the batch is the same
        # as once per message: the timers are deadlines from now, the rekey
        # test reads the counter after the last.
        actions: list[Action] = [
            SendBatch(peer.endpoint, datagrams),
            *self.transport_sent(peer, sum(map(len, datagrams)), any(packets), now),
        ]
        if len(datagrams) < len(packets):  # the keypair ran out of messages
            staged.extend(packets[len(datagrams) :])
            actions += self._initiate(peer, now, retry=False)
        return actions

    def _keepalive(self, peer: Peer, now: float) -> list[Action]:
        if not peer.staged:
            peer.staged.append(b"")
        return self._flush_staged(peer, now)

    def _initiate(self, peer: Peer, now: float, retry: bool) -> list[Action]:
        if peer.endpoint is None or not self.identity.present:
            return []
        if not retry:
            peer.timers.handshake_attempts = 0
        # A handshake message sent, initiation or response, holds back the next
        # initiation, retries too (send.c wg_packet_send_queued_handshake_initiation):
        # an end that just answered waits for its answer to complete the session.
        if now - peer.last_handshake_sent < REKEY_TIMEOUT:
            return []
        self._drop_handshake_index(peer)
        index = self._new_index(peer, None)
        initiation = peer.handshake.create_initiation(
            index, self._ephemeral(), tai64n(now + self.wall_offset), self.l2
        )
        data = peer.cookies.add_macs(initiation.pack(), now)
        peer.last_initiation_sent = peer.last_handshake_sent = now
        peer.handshakes.initiations_sent += 1
        jitter = int.from_bytes(self.randbytes(2), "little") / 65536 * REKEY_TIMEOUT_JITTER_MAX
        peer.timers.handshake_initiated(now, jitter)
        self._count_tx(peer, len(data), now)
        log.debug(
            "peer %s: initiation sent (attempt %d)", short(peer), peer.timers.handshake_attempts + 1
        )
        return [Send(peer.endpoint, data)]
