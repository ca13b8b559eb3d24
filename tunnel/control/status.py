"""A plain-data snapshot of a running interface: what `pyvpn show`, `show --json`
and the UAPI report. Public keys only; private and preshared keys never appear."""

from typing import Any

from tunnel.core.state import mode_name
from tunnel.host import clock, udp
from tunnel.protocol.address import format_address
from tunnel.protocol.allowed_ips import network_text
from tunnel.protocol.keys import encode

from .running import Tunnel


def snapshot(tunnel: Tunnel) -> dict[str, Any]:
    """The tunnel now, its plane's figures brought up to date first."""
    tunnel.plane.refresh()
    iface, now = tunnel.iface, clock.now()
    peers = []
    learned = iface.macs.entries(now) if iface.l2 else []  # once: C may hold the table
    for peer in iface.peers.values():
        macs = (
            [
                {"mac": mac.hex(":"), "age": round(age, 1)}
                for mac, owner, age in learned
                if owner is peer
            ]
            if iface.l2
            else None
        )
        peers.append(
            {
                "public_key": encode(peer.public_key),
                "endpoint": format_address(peer.endpoint) if peer.endpoint else None,
                # The host name the endpoint follows (tunnel/control/reresolve.py), if any.
                "endpoint_name": (
                    format_address(peer.endpoint_name) if peer.endpoint_name else None
                ),
                "allowed_ips": [network_text(n) for n in iface.routes.networks_of(peer)],
                "latest_handshake": peer.last_handshake_wall,
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
                "persistent_keepalive": peer.persistent_keepalive,
                "has_session": peer.current is not None and not peer.current.expired(now),
                "drops": vars(peer.drops).copy(),
                "handshakes": vars(peer.handshakes).copy(),
                **({"macs": macs} if macs is not None else {}),
                **tunnel.peer_notes.get(peer.public_key, {}),
                **(
                    {"allowed_macs": sorted(m.hex(":") for m in peer.allowed_macs)}
                    if iface.l2
                    else {}
                ),
            }
        )
    return {
        "name": tunnel.name,
        "mode": mode_name(iface.l2),
        "public_key": encode(iface.identity.public_key) if iface.identity.present else None,
        "listen_port": tunnel.listen_port,
        "fwmark": udp.mark(tunnel.plane.sock),
        "table": tunnel.table,  # config.InterfaceConfig.table
        # IP versions all traffic of which goes through
        "full_tunnel": sorted(tunnel.full_tunnel.versions),
        "datapath": tunnel.plane.name,
        "crypto_workers": tunnel.plane.crypto_workers,
        "mtu": iface.mtu,
        "addresses": [str(a) for a in tunnel.addresses],  # as the config gives them
        "bridge": tunnel.bridge,  # the one joined at start (tap)
        **({"mac_ageing": iface.macs.ageing} if iface.l2 else {}),
        "user": tunnel.user,  # the one run as after setup; None: root
        "under_load": now < iface.under_load_until,
        "cookie_replies_sent": iface.cookie_replies_sent,
        "drops": dict(iface.drops),
        # The C plane's own counters (dp.h dp_if_stats); None: Python plane.
        "native": tunnel.plane.own_stats(),
        **tunnel.notes,
        "peers": peers,
    }
