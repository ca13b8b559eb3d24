"""A LAN MTU of 1500 over the tunnel: hosts on standard LANs at both ends send
full-size packets, and the tunnel carries fewer bytes (--mtu, 1420 by default).

tap: the LAN host's packets reach pyvpn through the bridge whole (pyvpn's device
takes the bridge's MTU); a frame too big for the tunnel gets pyvpn's ICMP
"fragmentation needed" (tunnel/core/l2.py too_big_reply), sent from the address
the packet was for. tun: the gateway's kernel routes the packet to a device of
MTU --mtu and answers "fragmentation needed" from its own LAN address. Either way
the host learns the path MTU from ICMP and TCP shrinks its segments to fit; the
scenario records who answered and with which MTU, the TCP throughput from LAN
to LAN, and what becomes of 1472-byte UDP datagrams (1500-byte IP packets):
how many arrive, and how many of those in fragments.
"""

from __future__ import annotations

import re

from ..measure import MeasurementError, iperf_client, parse_iperf_tcp
from ..report import Figure, Result
from ..testbed import Namespace, stop_process
from . import generator
from .lan import TINC_FULL_SIZE, Lan, Sites, two_lans_setup
from .run import Run, Scenario

UDP_PAYLOAD = 1472  # + 8 UDP + 20 IPv4 = 1500, a full LAN packet
UDP_RATE = 500  # datagrams a second
UDP_PORT = 9000
QUIET = 1.0  # the receiver stops after this long without a datagram
_FRAG_NEEDED = re.compile(r"From (\S+) icmp_seq=\d+ Frag needed and DF set \(mtu = (\d+)\)")
_ROUTE_MTU = re.compile(r"\bmtu (\d+)")

FIGURES = [
    Figure("lan_tcp_bps", "TCP LAN to LAN", "Gbit/s", 1e9, 2),
    Figure("path_mtu_bytes", "path MTU learned", "bytes", 1.0, 0),
    Figure("udp_1472_delivered", "UDP 1472 B delivered", "fraction", 1.0, 3),
    Figure("udp_1472_fragmented", "UDP 1472 B in fragments", "fraction", 1.0, 3),
]


def measure(run: Run, sites: Sites) -> None:
    a, b = sites.lans
    # UDP first, on a path the host knows nothing about yet, as a new flow would.
    run.attempt("UDP, 1472-byte datagrams", lambda: _udp(run, a, b))
    run.attempt("path MTU", lambda: _path_mtu(run, a, b))
    run.attempt("TCP, LAN to LAN", lambda: _tcp(run, a, b))


def reassembled(ns: Namespace) -> int:
    """IPv4 packets the namespace put together from fragments (/proc/net/snmp ReasmOKs)."""
    lines = [line.split() for line in ns.run("cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = [line for line in lines if line and line[0] == "Ip:"][:2]
    return int(values[names.index("ReasmOKs")])


def _udp(run: Run, a: Lan, b: Lan) -> None:
    before = reassembled(b.hosts)
    receiver = generator.start(b.hosts, "receive", b.host4, UDP_PORT, QUIET)
    try:
        generator.wait_listening(receiver)
        sent = generator.generate(
            a.hosts,
            "udp",
            b.host4,
            UDP_PORT,
            UDP_PAYLOAD,
            UDP_RATE,
            run.settings.seconds,
            timeout=run.settings.seconds + 30,
        )
        got = generator.outcome(receiver, generator.FIRST_WAIT + 30)
    finally:
        stop_process(receiver, grace=1)  # gone already, unless the sender failed
    fragmented = reassembled(b.hosts) - before
    if not sent["sent"]:
        raise MeasurementError("no 1472-byte datagram could be sent")
    run.result.figures["udp_1472_delivered"] = got["received"] / sent["sent"]
    run.result.figures["udp_1472_fragmented"] = (
        fragmented / got["received"] if got["received"] else 0.0
    )
    run.result.details["udp_1472"] = {
        **sent,
        "received": got["received"],
        "reassembled": fragmented,
    }


def _path_mtu(run: Run, a: Lan, b: Lan) -> None:
    """Who tells the host, and what: forget the path MTU, then ping with DF at 1500."""
    a.hosts.run("ip", "route", "flush", "cache")
    done = a.hosts.run(
        "ping",
        "-n",
        "-M",
        "do",
        "-s",
        str(UDP_PAYLOAD),
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "1",
        b.host4,
        check=False,
    )
    answer = _FRAG_NEEDED.search(done.stdout)
    route = a.hosts.run("ip", "route", "get", b.host4).stdout
    learned = _ROUTE_MTU.search(route)
    if answer is None or learned is None:
        raise MeasurementError(
            f"no fragmentation-needed answer to a 1500-byte ping: {done.stdout.strip()[-200:]!r}"
        )
    run.result.figures["path_mtu_bytes"] = float(learned.group(1))
    who = answer.group(1)
    run.result.details["path_mtu"] = {
        "icmp_from": who,
        "icmp_mtu": int(answer.group(2)),
        # tap: pyvpn answers in the name of the destination; tun: the gateway's kernel.
        "answered_by": "pyvpn, as the destination host"
        if who == b.host4
        else "the gateway's kernel"
        if who == _gateway(a)
        else who,
    }


def _gateway(lan: Lan) -> str:
    route = lan.hosts.run("ip", "route", "show", "default").stdout.split()
    return route[route.index("via") + 1] if "via" in route else ""


def _tcp(run: Run, a: Lan, b: Lan) -> None:
    doc = iperf_client(a.hosts, b.hosts, b.host4, [], run.settings.seconds)
    tcp = parse_iperf_tcp(doc)
    run.result.figures["lan_tcp_bps"] = tcp.bits_per_second
    run.result.details["lan_tcp"] = {
        "retransmits": tcp.retransmits,
        "mss": doc.get("start", {}).get("tcp_mss_default"),
    }


def explain(result: Result) -> list[str]:
    """Who told the host the path MTU, and the segment size TCP chose (the first
    round's: the mechanism does not change from round to round)."""
    rounds = [r["details"] for r in result.details.get("rounds", [])] or [result.details]
    out = []
    pmtu = next((d["path_mtu"] for d in rounds if "path_mtu" in d), None)
    if pmtu:
        out.append(
            f"'fragmentation needed' (mtu {pmtu['icmp_mtu']}) came from "
            f"{pmtu['icmp_from']}: {pmtu['answered_by']}"
        )
    mss = next((d["lan_tcp"]["mss"] for d in rounds if d.get("lan_tcp", {}).get("mss")), None)
    if mss:
        out.append(f"TCP's segment size: {mss} bytes")
    return out


SCENARIO = Scenario(
    "lan-mtu",
    "A LAN MTU of 1500 over the tunnel",
    "A host on a 1500-byte LAN behind each gateway (a tap bridge, or a routed subnet "
    f"behind the tun gateway): {UDP_RATE} 1472-byte UDP datagrams a second for --time "
    "seconds (the share delivered, and the share of those reassembled from fragments); "
    "a ping of 1500 bytes with Don't Fragment (who answers 'fragmentation needed', and "
    "the path MTU the host then holds); iperf3 TCP from LAN host to LAN host.",
    lambda settings: FIGURES,
    two_lans_setup,
    measure,
    not_run=TINC_FULL_SIZE,
    explain=explain,
)
