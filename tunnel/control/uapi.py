"""WireGuard's cross-platform userspace API (wireguard.com/xplatform): the
key=value text protocol `wg` speaks over /var/run/wireguard/NAME.sock.
pyvpn answers `get=1` exactly as wireguard-go does, takes `set=1` (so `wg set`,
`wg setconf` and `wg syncconf` work), and adds `get=pyvpn`, which returns the
JSON status snapshot that `pyvpn show --json` prints, and `get=pyvpn_text`,
the text `pyvpn show` prints (control/show.py), as a JSON string. A set request
is parsed and checked whole here before core/reconfig.py applies it. The text
only: control/uapi_server.py listens and answers, control/uapi_client.py is the
other end."""

import errno
import ipaddress
import json
import re
from typing import Any

from tunnel.core.interface import Interface
from tunnel.core.reconfig import Change, IPEdit, PeerChange, Refused
from tunnel.host.routing import RESERVED_TABLES
from tunnel.host.udp import is_name, split_address
from tunnel.protocol import keys
from tunnel.protocol.address import format_address
from tunnel.protocol.allowed_ips import Network, network_text

from .config import LOW_ORDER, parse_mac

KEY_HEX = re.compile(r"[0-9a-fA-F]{64}")
DECIMAL = re.compile(r"[0-9]{1,10}")


def get_response(iface: Interface, listen_port: int, fwmark: int = 0) -> str:
    """The reply to `get=1`, in wireguard-go's order (device/uapi.go)."""
    lines = []
    if iface.identity.present:
        lines.append(f"private_key={iface.identity.private_key.hex()}")
    lines.append(f"listen_port={listen_port}")
    if fwmark:
        lines.append(f"fwmark={fwmark}")
    for peer in iface.peers.values():
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={(peer.preshared_key or bytes(32)).hex()}")
        lines.append("protocol_version=1")
        if peer.endpoint:
            lines.append(f"endpoint={format_address(peer.endpoint)}")
        wall = peer.last_handshake_wall or 0.0
        lines.append(f"last_handshake_time_sec={int(wall)}")
        lines.append(f"last_handshake_time_nsec={int((wall - int(wall)) * 1e9)}")
        lines.append(f"tx_bytes={peer.tx_bytes}")
        lines.append(f"rx_bytes={peer.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        lines += ["allowed_ip=" + network_text(n) for n in iface.routes.networks_of(peer)]
    return "\n".join(lines) + "\nerrno=0\n\n"


def status_response(status: dict[str, Any]) -> str:
    return f"json={json.dumps(status)}\nerrno=0\n\n"


def text_response(text: str) -> str:
    return f"text={json.dumps(text)}\nerrno=0\n\n"


def error_response(code: int) -> str:
    return f"errno={code}\n\n"


def set_error_response(code: int) -> str:
    """wg reads a set's errno as negative (ipc-uapi.h), as wireguard-go sends it."""
    return error_response(-code)


def parse_set(lines: list[str]) -> Change:
    """The lines after `set=1`, up to the blank line, as one Change; Refused
    for the first line that is not valid (device/uapi.go IpcSetOperation)."""
    change = Change()
    peer: PeerChange | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise Refused(errno.EPROTO, "a line is not key=value")
        if key == "public_key":
            peer = PeerChange(_key(key, value))
            change.peers.append(peer)
        elif peer is None:
            _device_line(change, key, value)
        else:
            _peer_line(peer, key, value)
    return change


def _device_line(change: Change, key: str, value: str) -> None:
    if key == "private_key":
        # Empty or all zeros: no key any more, no handshakes (wireguard-go's meaning).
        change.private_key = _key(key, value) if value else bytes(32)
    elif key == "listen_port":
        change.listen_port = _number(key, value, 0xFFFF)
    elif key == "fwmark":
        change.fwmark = _number(key, value, 0xFFFFFFFF) if value else 0  # empty: remove
    elif key == "replace_peers":
        change.replace_peers = _true(key, value)
    else:
        raise Refused(errno.EINVAL, f"unknown interface key {key[:40]!r}")


def _peer_line(peer: PeerChange, key: str, value: str) -> None:
    if key == "remove":
        peer.remove = _true(key, value)
    elif key == "update_only":
        peer.update_only = _true(key, value)
    elif key == "preshared_key":
        peer.preshared_key = _key(key, value)
    elif key == "endpoint":
        peer.endpoint = _endpoint(value)
    elif key == "pyvpn_endpoint_name":  # pyvpn's own key, sent by `pyvpn reload`
        peer.endpoint_name = _endpoint_name(value)
    elif key == "pyvpn_allowed_macs":  # pyvpn's, tap: the whole list, comma-separated
        peer.allowed_macs = [_mac(key, m) for m in value.split(",") if m]
    elif key == "persistent_keepalive_interval":
        peer.persistent_keepalive = _number(key, value, 0xFFFF)
    elif key == "replace_allowed_ips":
        peer.replace_allowed_ips = _true(key, value)
    elif key == "allowed_ip":
        # wg-tools from 2025 on (incremental allowed-ips) removes one with a leading '-'.
        removing = value.startswith("-")
        peer.allowed_ips.append(IPEdit(_network(value[1:] if removing else value), removing))
    elif key == "protocol_version":
        if value != "1":
            raise Refused(errno.EINVAL, f"protocol_version {value[:20]!r}: only 1 exists")
    else:
        raise Refused(errno.EINVAL, f"unknown peer key {key[:40]!r}")


def _key(key: str, value: str) -> bytes:
    if not KEY_HEX.fullmatch(value):
        raise Refused(errno.EINVAL, f"{key}: not 64 hex digits")
    return bytes.fromhex(value)


def _number(key: str, value: str, high: int) -> int:
    if not DECIMAL.fullmatch(value) or int(value) > high:
        raise Refused(errno.EINVAL, f"{key}: {value[:20]!r} is not a number from 0 to {high}")
    return int(value)


def _true(key: str, value: str) -> bool:
    if value != "true":
        raise Refused(errno.EINVAL, f"{key}: only true is valid, got {value[:20]!r}")
    return True


def _endpoint(value: str) -> tuple[str, int]:
    # wg resolves names itself and sends numeric addresses: no DNS here.
    try:
        host, port = split_address(value)
        return str(ipaddress.ip_address(host)), port
    except ValueError as e:
        raise Refused(errno.EINVAL, f"endpoint: {e}") from None


def _endpoint_name(value: str) -> tuple[str, int]:
    try:
        host, port = split_address(value)
    except ValueError as e:
        raise Refused(errno.EINVAL, f"pyvpn_endpoint_name: {e}") from None
    if not is_name(host) or len(host) > 253 or not host.isprintable() or " " in host:
        raise Refused(errno.EINVAL, f"pyvpn_endpoint_name: {host[:40]!r} is not a host name")
    return host, port


def _mac(key: str, value: str) -> bytes:
    try:
        return parse_mac(value)
    except ValueError as e:
        raise Refused(errno.EINVAL, f"{key}: {e}") from None


def _network(value: str) -> Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Refused(errno.EINVAL, f"allowed_ip: {value[:50]!r} is not a network") from None


def check(
    iface: Interface,
    change: Change,
    fwmark: int = 0,
    full_tunnel: bool = False,
    policy: bool = True,
) -> None:
    """Refuse what a running pyvpn cannot do, before anything changes. A full
    tunnel's routing rules rely on its fwmark, which also names its routing table
    (netlink.full_tunnel); without the policy (a routing table other than "auto")
    a default route is a route like any other."""
    if full_tunnel and change.fwmark not in (None, fwmark):
        raise Refused(
            errno.EBUSY,
            f"fwmark: the full tunnel's routing rules use {fwmark:#x}: "
            "change the config and restart",
        )
    for pc in change.peers:
        if not pc.remove and keys.low_order(pc.public_key):
            raise Refused(errno.EINVAL, f"public_key: {keys.encode(pc.public_key)} {LOW_ORDER}")
    if not iface.l2 and any(pc.allowed_macs for pc in change.peers):
        raise Refused(errno.EINVAL, "pyvpn_allowed_macs: tun mode routes by IP, not by MAC")
    _check_allowed_macs(iface, change)
    added = [e.network for pc in change.peers for e in pc.allowed_ips if not e.remove]
    if iface.l2 and added:
        raise Refused(errno.EINVAL, "allowed_ip: tap mode switches by MAC address, not by IP")
    mark = fwmark if change.fwmark is None else change.fwmark
    starts = policy and not full_tunnel and any(n.prefixlen == 0 for n in added)
    if starts and mark in RESERVED_TABLES:
        raise Refused(
            errno.EINVAL,
            f"allowed_ip: a full tunnel would route through table {mark} (its fwmark), "
            f"the kernel's {RESERVED_TABLES[mark]} table",
        )


def _check_allowed_macs(iface: Interface, change: Change) -> None:
    """No MAC address may be bound to two peers once the request is applied."""
    bound = {} if change.replace_peers else {k: p.allowed_macs for k, p in iface.peers.items()}
    for pc in change.peers:
        if pc.remove:
            bound.pop(pc.public_key, None)
        elif pc.allowed_macs is not None:
            bound[pc.public_key] = frozenset(pc.allowed_macs)
    owners: dict[bytes, bytes] = {}
    for key, macs in bound.items():
        for mac in macs:
            if owners.setdefault(mac, key) != key:
                raise Refused(
                    errno.EINVAL,
                    f"pyvpn_allowed_macs: {mac.hex(':')} would be bound to two peers",
                )
