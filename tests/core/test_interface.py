"""The sans-IO core driven through whole scenarios on a fake clock: handshake,
transport, every timer of the whitepaper, cookies, roaming, routing, tap switching."""

import logging
import random

import pytest

from tunnel.core.actions import Send
from tunnel.core.l2 import Learned, MacTable
from tunnel.core.l3 import unreachable
from tunnel.core.reconfig import Change, PeerChange, apply
from tunnel.protocol import keys
from tunnel.protocol.constants import (
    ICMP_ERRORS_BURST,
    ICMP_ERRORS_PER_SECOND,
    INITIATION_SIZE,
    INITIATIONS_PER_SECOND,
    KEEPALIVE_SIZE,
    KEEPALIVE_TIMEOUT,
    MAC_TABLE_MAX,
    MAX_STAGED_PACKETS,
    MAX_TIMER_HANDSHAKES,
    RATELIMIT_BURST,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    START_INITIATIONS_BURST,
    START_INITIATIONS_PER_SECOND,
)
from tunnel.protocol.cookie import CookieChecker, CookieGenerator
from tunnel.protocol.crypto import DecryptError
from tunnel.protocol.messages import INITIATION_MAC1_OFFSET, Initiation, parse
from tunnel.protocol.noise import Handshake
from tunnel.protocol.tai64n import tai64n
from tunnel.protocol.timers import Timer

from ..packets import ipv4_packet, udp_packet
from ..simnet import Node, SimNet, pair, peer_of


def kinds(net, since=0):
    return [data[0] for _, _, data in net.wire[since:]]


def test_first_packet_handshakes_then_flows_both_ways():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2", b"ping"))
    assert kinds(net) == [1, 2, 4]  # initiation, response, the staged packet
    assert b.delivered == [ipv4_packet("10.0.0.1", "10.0.0.2", b"ping")]
    net.send(b, ipv4_packet("10.0.0.2", "10.0.0.1", b"pong"))
    assert a.delivered[-1].endswith(b"pong")
    assert peer_of(a).last_handshake_wall is not None


def test_responder_waits_for_confirmation_before_sending():
    net, a, b = pair()
    net.lose = lambda data: data[0] == 4  # lose the initiator's transport messages
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    pb = peer_of(b)
    assert pb.current is None and pb.next is not None
    net.lose = lambda data: False
    n = len(net.wire)
    net.send(b, ipv4_packet("10.0.0.2", "10.0.0.1"))
    # b must not use the unconfirmed keys; having just answered, it leaves the
    # handshake to a for REKEY_TIMEOUT (send.c's last_sent_handshake), then
    # initiates its own.
    assert kinds(net, n) == []
    net.now += REKEY_TIMEOUT
    net.send(b, ipv4_packet("10.0.0.2", "10.0.0.1"))
    assert kinds(net, n)[0] == 1


def test_padding_hides_length_and_is_stripped():
    net, a, b = pair()
    packet = ipv4_packet("10.0.0.1", "10.0.0.2", b"odd-sized!")
    net.send(a, packet)
    assert (len(net.wire[-1][2]) - KEEPALIVE_SIZE) % 16 == 0
    assert b.delivered == [packet]


def test_replayed_transport_message_is_dropped():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    captured = net.wire[-1]
    net.inject(captured[0], b, captured[2])
    assert len(b.delivered) == 1
    assert peer_of(b).drops.replay_or_forged == 1


def test_inner_source_outside_allowed_ips_is_dropped():
    net, a, b = pair()
    a.iface.routes.insert(__import__("ipaddress").ip_network("10.9.0.0/16"), peer_of(a))
    net.send(a, ipv4_packet("10.0.0.66", "10.9.0.1"))
    assert b.delivered == [] and peer_of(b).drops.bad_source == 1


def test_packet_without_route_gets_unreachable_as_often_as_linux_allows():
    net, a, _ = pair()
    packet = udp_packet("10.0.0.1", "10.7.7.7", b"nobody")
    for _ in range(ICMP_ERRORS_BURST + 10):
        net.send(a, packet)
    assert net.wire == [] and a.iface.drops["no_route"] == ICMP_ERRORS_BURST + 10
    assert a.delivered == [unreachable(packet)] * ICMP_ERRORS_BURST
    net.advance(2.5 / ICMP_ERRORS_PER_SECOND, step=1 / ICMP_ERRORS_PER_SECOND)  # 2 tokens
    net.send(a, packet)
    net.send(a, packet)
    net.send(a, packet)
    assert len(a.delivered) == ICMP_ERRORS_BURST + 2


def test_keepalive_after_receiving_data_without_reply():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    n = len(net.wire)
    net.advance(KEEPALIVE_TIMEOUT + 0.2)
    sent_by_b = [d for src, _, d in net.wire[n:] if src == b.address]
    assert [len(d) for d in sent_by_b] == [KEEPALIVE_SIZE]


def test_retransmits_initiation_then_gives_up():
    net, a, b = pair()
    del net.nodes[b.address]  # b is unreachable
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    net.advance(REKEY_TIMEOUT + 0.5)
    assert kinds(net) == [1, 1]
    net.advance(120)
    # As timers.c: the first initiation and MAX_TIMER_HANDSHAKES + 1 retries.
    assert len(net.wire) == MAX_TIMER_HANDSHAKES + 2
    assert len(peer_of(a).staged) == 0  # queued packets are dropped, never leaked


def test_start_greets_every_peer_with_an_endpoint_at_a_pace():
    net = SimNet()
    hub = net.node("hub", "198.18.0.1")
    spokes = [net.node(f"s{i}", f"198.18.{1 + i // 250}.{1 + i % 250}") for i in range(300)]
    for i, s in enumerate(spokes):
        net.connect(hub, s, [], [f"10.1.{i // 250}.{i % 250}/32"], b_endpoint=False)
    quiet = net.node("quiet", "198.18.9.9")
    net.connect(hub, quiet, [], ["10.9.9.9/32"], a_endpoint=False)  # nowhere to send
    first = hub.iface.start(net.now)
    assert len(first) == START_INITIATIONS_BURST
    assert all(parse(a.data).__class__ is Initiation for a in first)
    assert len(hub.iface.tick(net.now + 0.1)) == START_INITIATIONS_PER_SECOND // 10
    later = hub.iface.tick(net.now + 2)  # before the first retransmission is due
    assert len(first) + START_INITIATIONS_PER_SECOND // 10 + len(later) == len(spokes)
    assert {a.destination for a in first + later} <= {s.address for s in spokes}
    assert hub.iface.tick(net.now + 3) == []  # each greeted once


def test_giving_up_on_a_handshake_disarms_the_keepalive():
    net, a, _ = pair()
    peer = peer_of(a)
    peer.timers.data_received(net.now)  # data arrived: a keepalive is due in 10 s
    peer.timers.handshake_attempts = MAX_TIMER_HANDSHAKES + 1
    peer.timers.handshake_initiated(net.now - REKEY_TIMEOUT, jitter=0)
    assert a.iface.tick(net.now) == []  # gives up
    assert not peer.timers.pending(Timer.SEND_KEEPALIVE)
    assert peer.timers.pending(Timer.ZERO_KEY_MATERIAL)


def test_a_cookie_reply_is_taken_once():
    """A replayed cookie reply is refused (cookie.c forgets the mac1 it answered)."""
    responder = keys.public_key(keys.generate_private_key())
    checker = CookieChecker(responder, random.Random(1).randbytes)
    generator = CookieGenerator(responder)
    message = generator.add_macs(bytes(INITIATION_SIZE), now=0)
    reply = checker.create_reply(message, INITIATION_MAC1_OFFSET, 7, ("198.18.0.1", 9), now=0)
    generator.consume_reply(reply, now=1)
    cookie = generator.cookie
    with pytest.raises(DecryptError):
        generator.consume_reply(reply, now=2)
    assert (generator.cookie, generator.cookie_received) == (cookie, 1)


def test_new_handshake_when_data_goes_unanswered():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    del net.nodes[b.address]
    n = len(net.wire)
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    net.advance(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 0.5)
    assert 1 in kinds(net, n + 1)


def test_rekey_after_time_keeps_traffic_flowing():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    first = peer_of(a).current
    # A packet b sends on the first session that is still on the wire when the
    # rekey completes: a must still take it.
    late = ipv4_packet("10.0.0.2", "10.0.0.1", b"late")
    in_flight = peer_of(b).current.encrypt(late, net.now)
    for _ in range(int(REKEY_AFTER_TIME) + 5):
        net.advance(1.0, step=0.5)
        net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
        net.send(b, ipv4_packet("10.0.0.2", "10.0.0.1"))
    assert peer_of(a).current is not first and peer_of(a).previous is first
    assert len(b.delivered) == int(REKEY_AFTER_TIME) + 6
    assert len(a.delivered) == int(REKEY_AFTER_TIME) + 5
    net.inject(b.address, a, in_flight)
    assert a.delivered[-1] == late
    # What `show --json` and `pyvpn metrics` report: one handshake, then one rekey.
    for node in (a, b):
        assert vars(peer_of(node).handshakes) == {
            "initiations_sent": 2 if node is a else 0,
            "completed": 2,
            "rekeys": 1,
        }


def transport_counters(net, since, source):
    return [int.from_bytes(d[8:16], "little") for s, _, d in net.wire[since:] if s == source
            and d[0] == 4]  # fmt: skip


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_a_keypair_that_sent_rekey_after_messages_is_replaced(side):
    """Either side, initiator or responder, handshakes anew once its session has
    sent more than REKEY_AFTER_MESSAGES messages (timers.c keep_key_fresh)."""
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    net.send(b, ipv4_packet("10.0.0.2", "10.0.0.1"))  # b's session confirmed
    net.advance(REKEY_TIMEOUT + 0.1)  # no initiation holds back the next
    sender, receiver = (a, b) if side == "initiator" else (b, a)
    src, dst = ("10.0.0.1", "10.0.0.2") if sender is a else ("10.0.0.2", "10.0.0.1")
    first = peer_of(sender).current
    first.send_counter = REKEY_AFTER_MESSAGES - 1
    n = len(net.wire)
    net.send(sender, ipv4_packet(src, dst, b"the 2^60th"))
    assert kinds(net, n) == [4]
    net.send(sender, ipv4_packet(src, dst, b"one more"))
    assert kinds(net, n) == [4, 4, 1, 2, 4]  # then a handshake, confirmed
    assert transport_counters(net, n, sender.address)[:2] == [
        REKEY_AFTER_MESSAGES - 1,
        REKEY_AFTER_MESSAGES,
    ]
    assert peer_of(sender).current is not first
    assert peer_of(sender).handshakes.rekeys == 1
    assert receiver.delivered[-2:] == [
        ipv4_packet(src, dst, b"the 2^60th"),
        ipv4_packet(src, dst, b"one more"),
    ]


def test_no_message_is_sent_past_reject_after_messages():
    """The last counter a keypair uses is REJECT_AFTER_MESSAGES - 1: the packets
    after it wait for a new session and go on it."""
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    net.advance(REKEY_TIMEOUT + 0.1)
    peer_of(a).current.send_counter = REJECT_AFTER_MESSAGES - 1
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 20) for i in range(3)]
    n = len(net.wire)
    net.run(a, a.iface.send_packets(packets, net.now))
    counters = transport_counters(net, n, a.address)
    assert counters == [REJECT_AFTER_MESSAGES - 1, 0, 1]  # the last two on the new keys
    assert kinds(net, n) == [4, 1, 2, 4, 4]
    assert b.delivered[-3:] == packets


def test_staged_packets_beyond_the_queue_drop_the_oldest_counted():
    """While no handshake completes, at most MAX_STAGED_PACKETS wait; each one
    more drops the oldest and is counted (the kernel's send.c)."""
    net, a, b = pair()
    del net.nodes[b.address]  # b is unreachable
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", i.to_bytes(2, "big")) for i in range(200)]
    for packet in packets[:100]:
        net.send(a, packet)
    net.run(a, a.iface.send_packets(packets[100:], net.now))  # in one read, too
    assert peer_of(a).drops.staged_overflow == 200 - MAX_STAGED_PACKETS
    net.nodes[b.address] = b
    net.advance(REKEY_TIMEOUT + 0.5)  # the next retry gets through
    assert b.delivered == packets[-MAX_STAGED_PACKETS:]


def test_no_keypair_is_used_past_reject_after_time():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    old = peer_of(a).current
    del net.nodes[b.address]
    net.advance(REJECT_AFTER_TIME + 1, step=1.0)
    n = len(net.wire)
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert old.expired(net.now)
    assert all(d[0] != 4 for _, _, d in net.wire[n:])


def test_key_material_is_zeroed_after_three_reject_times():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    net.advance(REJECT_AFTER_TIME * 3 + 1, step=5.0)
    assert peer_of(a).keypairs() == [] and peer_of(b).keypairs() == []
    assert a.iface.indices == {} and b.iface.indices == {}


def test_roaming_follows_last_authenticated_source():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    del net.nodes[a.address]
    a.address = ("198.18.0.11", 4444)
    net.nodes[a.address] = a
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert peer_of(b).endpoint == ("198.18.0.11", 4444)
    net.send(b, ipv4_packet("10.0.0.2", "10.0.0.1", b"back"))
    assert a.delivered[-1].endswith(b"back")


def test_forged_source_does_not_roam():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    forged = bytearray(net.wire[-1][2])
    forged[-1] ^= 1
    net.inject(("203.0.113.5", 1), b, bytes(forged))
    assert peer_of(b).endpoint == a.address


def test_replayed_initiation_is_rejected():
    net, a, b = pair()
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    initiation = net.wire[0][2]
    net.advance(1.0)
    n = len(net.wire)
    net.inject(a.address, b, initiation)
    assert len(net.wire) == n and b.iface.drops["replayed_initiation"] == 1


def test_under_load_answers_with_cookie_and_mac2_gets_through():
    net = SimNet()
    a = net.node("a", "198.18.0.1")
    b = net.node("b", "198.18.0.2", under_load_threshold=0)
    net.connect(a, b, ["10.0.0.1/32"], ["10.0.0.2/32"])
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert kinds(net) == [1, 3]  # initiation answered by a cookie reply
    assert peer_of(a).cookies.cookie
    net.advance(REKEY_TIMEOUT + 0.5)  # the retransmission carries mac2
    assert parse(net.wire[2][2]).mac2 != bytes(16)
    assert kinds(net)[2:5] == [1, 2, 4]
    assert len(b.delivered) == 1


def lost_initiation(net: SimNet, a) -> bytes:
    """An initiation a sends to b that never arrives: for the test to send as it likes."""
    net.lose = lambda data: True
    net.send(a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    net.lose = lambda data: False
    return net.wire[-1][2]


def initiation_and_cookie_from(net: SimNet, a, b, source: tuple[str, int]) -> bytes:
    """a's initiation as sent from `source` with the mac2 of the cookie b hands out
    there under load: what only a sender that receives at `source` can make."""
    initiation = lost_initiation(net, a)
    (reply,) = b.iface.receive_datagram(initiation, source, net.now)
    cookies = CookieGenerator(b.iface.identity.public_key)
    cookies.add_macs(initiation, net.now)
    cookies.consume_reply(parse(reply.data), net.now)
    return cookies.add_macs(initiation, net.now)


def test_under_load_cookie_replies_are_not_limited_so_spoofing_cannot_withhold_one():
    """A spoofer sending initiations in a real peer's name under load must not spend
    that peer's share: cookie replies go out unlimited (cookie.c), and only messages
    whose mac2 proves their source are rate limited."""
    net = SimNet()
    a = net.node("a", "198.18.0.1")
    b = net.node("b", "198.18.0.2", under_load_threshold=0)
    net.connect(a, b, ["10.0.0.1/32"], ["10.0.0.2/32"])
    spoofed = lost_initiation(net, a)
    net.lose = lambda data: True  # the cookie replies go to a, but not through
    for _ in range(100):
        net.inject(a.address, b, spoofed)
    assert b.iface.cookie_replies_sent == 100 and not b.iface.drops["ratelimited"]
    # a itself still gets its cookie (retrying: its first initiation was lost) and,
    # one retry later, through.
    net.lose = lambda data: False
    net.advance(2 * (REKEY_TIMEOUT + 0.5))
    assert peer_of(a).cookies.cookie and len(b.delivered) == 1


def test_under_load_an_ipv6_slash_64_is_one_source():
    """One host holds a whole /64, so the rate limit of proven sources counts it as
    one, as ratelimiter.c does."""
    net = SimNet()
    a = net.node("a", "198.18.0.1")
    b = net.node("b", "198.18.0.2", under_load_threshold=0)
    net.connect(a, b, ["10.0.0.1/32"], ["10.0.0.2/32"])
    for i in range(1, 21):
        source = (f"2001:db8:0:1::{i:x}", 51820)
        b.iface.receive_datagram(initiation_and_cookie_from(net, a, b, source), source, net.now)
    assert b.iface.drops["ratelimited"] == 20 - RATELIMIT_BURST
    source = ("2001:db8:0:2::1", 51820)
    b.iface.receive_datagram(initiation_and_cookie_from(net, a, b, source), source, net.now)
    assert b.iface.drops["ratelimited"] == 20 - RATELIMIT_BURST


def test_a_peer_initiating_too_fast_is_answered_once_per_flood_interval():
    """The per-peer flood guard (noise.c): initiations that authenticate as a known
    peer, each newer than the last, get a response (and cost the work of one) at
    most INITIATIONS_PER_SECOND times a second; the rest count as handshake_flood."""
    net, a, b = pair()
    initiator = Handshake(a.iface.identity, b.iface.identity.public_key)
    macs = CookieGenerator(b.iface.identity.public_key)
    gap = 0.4 / INITIATIONS_PER_SECOND  # 2.5 times the rate: every third is answered
    answers = 0
    for i in range(30):
        now = net.now + i * gap
        msg = initiator.create_initiation(i + 1, keys.generate_private_key(), tai64n(1.7e9 + i))
        actions = b.iface.receive_datagram(macs.add_macs(msg.pack(), now), a.address, now)
        answers += sum(isinstance(action, Send) for action in actions)
    assert (answers, b.iface.drops["handshake_flood"]) == (10, 20)
    assert not b.iface.drops["replayed_initiation"] and not b.iface.drops["ratelimited"]


def test_three_peers_route_by_allowed_ips():
    net = SimNet()
    hub = net.node("hub", "198.18.0.1")
    spokes = [net.node(f"s{i}", f"198.18.0.{i + 2}") for i in range(3)]
    for i, s in enumerate(spokes):
        net.connect(hub, s, ["10.0.0.0/24"], [f"10.0.0.{i + 2}/32"])
    for i in range(3):
        net.send(hub, ipv4_packet("10.0.0.1", f"10.0.0.{i + 2}", f"to {i}".encode()))
    assert [s.delivered for s in spokes] == [
        [ipv4_packet("10.0.0.1", f"10.0.0.{i + 2}", f"to {i}".encode())] for i in range(3)
    ]


def tap_hub(spokes: int, **kw: float) -> tuple[SimNet, Node, list[Node]]:
    """A tap hub with a peer per spoke, and the spokes, each with the hub as its peer."""
    net = SimNet()
    hub = net.node("hub", "198.18.0.1", l2=True, **kw)
    nodes = [net.node(f"s{i}", f"198.18.0.{i + 2}", l2=True) for i in range(spokes)]
    for spoke in nodes:
        net.connect(hub, spoke, [], [])
    return net, hub, nodes


def frame(dst: bytes, src: bytes, payload: bytes = b"\x88\xb5hello") -> bytes:
    return dst + src + payload


MAC = {n: bytes([2, 0, 0, 0, 0, n]) for n in range(1, 5)}
BROADCAST = b"\xff" * 6


def test_tap_switch_learns_floods_and_ages():
    net, hub, spokes = tap_hub(3, mac_ageing=30)
    # Unknown destination: flooded to all three.
    net.send(hub, frame(MAC[2], MAC[1]))
    assert [len(s.delivered) for s in spokes] == [1, 1, 1]
    # Spoke 0 answers from MAC 2: the hub learns it and unicasts from then on.
    net.send(spokes[0], frame(MAC[1], MAC[2]))
    net.send(hub, frame(MAC[2], MAC[1]))
    assert [len(s.delivered) for s in spokes] == [2, 1, 1]
    net.send(hub, frame(BROADCAST, MAC[1]))
    assert [len(s.delivered) for s in spokes] == [3, 2, 2]
    net.advance(31, step=1.0)
    net.send(hub, frame(MAC[2], MAC[1]))
    assert [len(s.delivered) for s in spokes] == [4, 3, 3]  # aged out: flooded again


def test_tap_hub_relays_a_frame_back_from_its_bridge_but_never_to_its_sender():
    net, hub, spokes = tap_hub(3)
    net.send(spokes[0], frame(BROADCAST, MAC[1]))
    net.send(spokes[1], frame(BROADCAST, MAC[2]))
    # What the hub's bridge hands back through its hairpin port, as read from the device.
    relayed = hub.delivered[:]
    for f in relayed:
        net.send(hub, f)
    assert [s.delivered for s in spokes] == [[relayed[1]], [relayed[0]], relayed]
    net.send(hub, frame(MAC[2], MAC[1]))  # unicast from spoke 0 to spoke 1
    net.send(hub, frame(MAC[1], MAC[1]))  # a frame for its own source goes nowhere
    assert [len(s.delivered) for s in spokes] == [1, 2, 2]


def test_tap_a_peer_cannot_take_a_mac_another_peer_holds():
    net, hub, spokes = tap_hub(3, mac_ageing=30)
    net.send(spokes[0], frame(BROADCAST, MAC[1]))  # MAC 1 lives behind spoke 0
    net.send(spokes[1], frame(MAC[3], MAC[1]))  # spoke 1 forges it
    assert len(hub.delivered) == 1  # the forgery goes nowhere
    forger = hub.iface.peers[spokes[1].iface.identity.public_key]
    assert forger.drops.bad_source == 1
    net.send(hub, frame(MAC[1], MAC[2]))
    assert [len(s.delivered) for s in spokes] == [1, 0, 0]  # unicast still to its host
    net.advance(31, step=1.0)  # MAC 1's entry ages out: a host may move
    net.send(spokes[1], frame(BROADCAST, MAC[1]))
    net.send(hub, frame(MAC[1], MAC[2]))
    assert [len(s.delivered) for s in spokes] == [1, 1, 0]


def test_tap_allowed_macs_bind_addresses_to_their_peer():
    net, hub, spokes = tap_hub(2, mac_ageing=30)
    bound = hub.iface.peers[spokes[0].iface.identity.public_key]
    apply(hub.iface, Change(peers=[PeerChange(bound.public_key, allowed_macs=[MAC[1]])]), 0)
    net.send(hub, frame(MAC[1], MAC[4]))  # unicast to it before it was ever seen
    assert [len(s.delivered) for s in spokes] == [1, 0]
    net.send(spokes[0], frame(BROADCAST, MAC[2]))  # a source outside its list
    net.send(spokes[1], frame(BROADCAST, MAC[1]))  # another peer claiming it
    assert hub.delivered == []
    other = hub.iface.peers[spokes[1].iface.identity.public_key]
    assert (bound.drops.bad_source, other.drops.bad_source) == (1, 1)
    net.send(spokes[0], frame(BROADCAST, MAC[1]))
    assert len(hub.delivered) == 1
    net.advance(31, step=1.0)  # bound entries do not age
    net.send(spokes[1], frame(BROADCAST, MAC[1]))
    assert other.drops.bad_source == 2
    assert hub.iface.macs.lookup(MAC[1], net.now) is bound


def test_tap_switch_holds_as_many_macs_as_c_and_ages_room_free():
    table = MacTable(ageing=30)
    macs = [bytes([2, 0]) + i.to_bytes(4, "big") for i in range(MAC_TABLE_MAX + 1)]
    for mac in macs[:-1]:
        table.learn(mac, "x", now=0)
    assert table.learn(macs[-1], "x", now=1) is Learned.TABLE_FULL  # flooded to every peer
    assert table.lookup(macs[-1], now=1) is None
    assert len(table.entries(now=1)) == MAC_TABLE_MAX
    assert table.learn(macs[0], "x", now=2) is Learned.YES  # one it holds is refreshed
    assert table.learn(macs[-1], "x", now=31) is Learned.YES  # the rest aged out: room
    assert table.lookup(macs[-1], now=31) == "x"


def test_tap_never_learns_a_mac_from_an_unauthenticated_frame():
    net = SimNet()
    hub = net.node("hub", "198.18.0.1", l2=True)
    s = net.node("s", "198.18.0.2", l2=True)
    net.connect(hub, s, [], [])
    net.send(s, frame(BROADCAST, MAC[3]))  # the session, and MAC[3] behind s
    # A frame from MAC[4], which the hub has not seen, caught on its way...
    net.lose = lambda data: True
    net.send(s, frame(BROADCAST, MAC[4]))
    net.lose = lambda data: False
    genuine = net.wire[-1][2]
    # ...and delivered with its tag broken: the plaintext is intact, but unproven.
    forged = bytearray(genuine)
    forged[-1] ^= 1
    net.inject(s.address, hub, bytes(forged))
    assert [m for m, _, _ in hub.iface.macs.entries(net.now)] == [MAC[3]]
    assert len(hub.delivered) == 1 and peer_of(hub).drops.replay_or_forged == 1
    # The same message as sent is learned from: only the tag kept MAC[4] out.
    net.inject(s.address, hub, genuine)
    assert [m for m, _, _ in hub.iface.macs.entries(net.now)] == [MAC[3], MAC[4]]


def test_mode_mismatch_is_reported_on_both_sides(caplog):
    net = SimNet()
    a = net.node("a", "198.18.0.1", l2=True)
    b = net.node("b", "198.18.0.2")
    net.connect(a, b, ["10.0.0.1/32"], ["10.0.0.2/32"])
    with caplog.at_level(logging.WARNING, logger="pyvpn"):
        net.send(a, frame(BROADCAST, MAC[1]))
    messages = [r.getMessage() for r in caplog.records]
    assert any("configured for tap mode but this interface is tun" in m for m in messages)
    assert any("configured for tun mode but this interface is tap" in m for m in messages)
    assert b.delivered == [] and peer_of(a).current is None and peer_of(b).next is None
