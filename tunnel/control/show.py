"""What `pyvpn show` prints of a tunnel's status snapshot (control/status.py),
in wg show's layout. The daemon renders it (`get=pyvpn_text`), so that a hub's
`pyvpn show` moves text rather than JSON through both ends."""

import time
from typing import Any

from tunnel.host.routing import ip_versions


def _crypto(s: dict[str, Any]) -> str:
    """The crypto workers beside the I/O worker, where there are any (a daemon
    from before them reports none)."""
    n = s.get("crypto_workers", 0)
    return f" ({n} crypto worker{'s' if n > 1 else ''})" if n else ""


def render(s: dict[str, Any]) -> str:
    """One tunnel's snapshot (control/status.py) as `pyvpn show` prints it."""
    lines = [
        f"interface: {s['name']}",
        f"  public key: {s['public_key'] or '(none)'}",
        f"  listening port: {s['listen_port']}",
        f"  address: {', '.join(s.get('addresses', [])) or '(none)'}",
        f"  mode: {s['mode']}, data plane: {s['datapath']}{_crypto(s)}, mtu: {s['mtu']}",
    ]
    if s.get("bridge"):
        lines.append(f"  bridge: {s['bridge']}")
    if s["fwmark"]:
        lines.append(f"  fwmark: {s['fwmark']:#x}")
    where = {"auto": "main table", "off": "none (table off)"}.get(s["table"], f"table {s['table']}")
    lines.append(f"  routes: {where}")
    if s["full_tunnel"]:
        versions = ip_versions(s["full_tunnel"])
        lines.append(f"  full tunnel: all {versions} traffic but the tunnel's own")
    if s["drops"]:
        lines.append("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(s["drops"].items())))
    now = time.time()
    if s.get("fleet"):
        lines.append(f"  fleet: {fleet_line(s['fleet'], now)}")
    for p in s["peers"]:
        lines += ["", f"peer: {p['public_key']}"]
        name = p.get("endpoint_name")  # a daemon from before names were followed: none
        if p["endpoint"]:
            named = f" ({name})" if name else ""
            lines.append(f"  endpoint: {p['endpoint']}{named}")
        elif name:
            lines.append(f"  endpoint: none yet ({name} does not resolve)")
        if p.get("fleet"):
            lines.append(f"  fleet host: {fleet_peer_line(p['fleet'], now)}")
        lines.append(f"  allowed ips: {', '.join(p['allowed_ips']) or '(none)'}")
        if p["latest_handshake"]:
            lines.append(f"  latest handshake: {ago(now - p['latest_handshake'])}")
        lines.append(
            f"  transfer: {human_bytes(p['rx_bytes'])} received, {human_bytes(p['tx_bytes'])} sent"
        )
        if p["persistent_keepalive"]:
            lines.append(f"  persistent keepalive: every {p['persistent_keepalive']} seconds")
        drops = {k: v for k, v in p["drops"].items() if v}
        if drops:
            lines.append("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
        if p.get("macs"):
            lines.append("  learned macs: " + ", ".join(m["mac"] for m in p["macs"]))
        if p.get("allowed_macs"):
            lines.append("  allowed macs: " + ", ".join(p["allowed_macs"]))
    return "\n".join(lines)


def fleet_line(fleet: dict[str, Any], now: float) -> str:
    """The fleet host's own state: its name, the registry, what it refused."""
    down = fleet["registry_down_since"]
    registry = "up" if down is None else f"unreachable for {ago(now - down).removesuffix(' ago')}"
    line = f"{fleet['host']} in {fleet['prefix']}, registry {registry}"
    if fleet["refused"]:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(fleet["refused"].items()))
        line += f", refused records: {refused}"
    return line


def fleet_peer_line(fleet: dict[str, Any], now: float) -> str:
    """Which fleet host a peer is, and how it is reached: direct (at its own
    address or its public mapping) or relayed, and since when."""
    if fleet["path"] is None:
        return f"{fleet['host']}, not reached yet"
    since = time.strftime("%H:%M:%S", time.localtime(fleet["since"]))
    reached = f"{fleet['path']} {fleet['endpoint']}"
    return f"{fleet['host']}, {reached} since {since} ({ago(now - fleet['since'])})"


def ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    parts = [(seconds // 3600, "hour"), (seconds % 3600 // 60, "minute"), (seconds % 60, "second")]
    text = ", ".join(f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in parts if n)
    return (text or "0 seconds") + " ago"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError
