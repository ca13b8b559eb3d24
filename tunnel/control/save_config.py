"""SaveConfig: at down, the running config written back to the file it came from,
in that file's format, as wg-quick's save_config does: the file's own settings
(DNS, Table, hooks, SaveConfig), the device's addresses as they are, and what
`wg showconf` would give (private key, listen port, fwmark, MTU if the file sets
one, and the peers as they run now, with their endpoints)."""

import asyncio
import logging
from pathlib import Path
from typing import Any

from tunnel.control.config import Config
from tunnel.control.convert import to_toml, to_wg_quick
from tunnel.core.interface import Interface
from tunnel.host import netlink, udp
from tunnel.host.routing import InterfaceAddress
from tunnel.host.secret_file import write_secret
from tunnel.protocol.address import format_address
from tunnel.protocol.keys import encode

from .running import Tunnel

log = logging.getLogger("pyvpn")


async def save(tunnel: Tunnel, config: Config) -> None:
    """SaveConfig, as wg-quick does it at down: after PreDown, before teardown."""
    # pyroute2 cannot run inside the event loop it would use itself.
    loop = asyncio.get_running_loop()
    configured = config.interface.addresses
    addresses = await loop.run_in_executor(None, _addresses_now, tunnel.name, configured)
    plane, iface = tunnel.plane, tunnel.iface
    plane.refresh()
    data = running_data(
        config, iface, tunnel.listen_port, udp.mark(plane.sock), iface.mtu, addresses
    )
    try:
        write(config, data)
    except (OSError, ValueError) as e:
        log.error("%s: SaveConfig: cannot write %s: %s", tunnel.name, config.path, e)
        return
    log.info("%s: SaveConfig: wrote the running config to %s", tunnel.name, config.path)


def _addresses_now(name: str, configured: list[InterfaceAddress]) -> list[InterfaceAddress] | None:
    try:
        return netlink.addresses(name, configured)
    except netlink.LinkError as e:  # the device is gone: the file's addresses stay
        log.warning("%s: SaveConfig: %s", name, e)
        return None


def running_data(
    config: Config,
    iface: Interface,
    listen_port: int,
    fwmark: int,
    mtu: int,
    addresses: list[InterfaceAddress] | None = None,
) -> dict[str, Any]:
    """The TOML-shaped dict of the tunnel as it runs. A key file stays a key file
    while its key is the one in use, so a secret kept apart stays apart.
    `addresses` are the device's now (None: the file's stay), as wg-quick saves
    what `ip address show` lists."""
    interface = dict(config.data.get("interface", {}))
    if addresses is not None:
        interface.pop("address", None)
        if addresses:
            interface["address"] = [str(a) for a in addresses]
    if not iface.identity.present:  # as `wg showconf` gives no PrivateKey then
        interface.pop("private_key", None)
        interface.pop("private_key_file", None)
    elif "private_key_file" not in interface or iface.identity.private_key != (
        config.interface.private_key
    ):
        interface.pop("private_key_file", None)
        interface["private_key"] = encode(iface.identity.private_key)
    interface["listen_port"] = listen_port
    interface.pop("fwmark", None)
    if fwmark:
        interface["fwmark"] = fwmark
    if "mtu" in interface:
        interface["mtu"] = mtu
    written_peers = config.data.get("peer", [])  # none in a Config that parse() made alone
    configured = {p.public_key: (p, d) for p, d in zip(config.peers, written_peers, strict=False)}
    peers = []
    for peer in iface.peers.values():
        given, written = configured.get(peer.public_key, (None, {}))
        data: dict[str, Any] = {"public_key": encode(peer.public_key)}
        if peer.preshared_key:
            if "preshared_key_file" in written and given.preshared_key == peer.preshared_key:
                data["preshared_key_file"] = written["preshared_key_file"]
            else:
                data["preshared_key"] = encode(peer.preshared_key)
        # A name the endpoint follows (tunnel/control/reresolve.py) stays the name.
        endpoint = peer.endpoint_name or peer.endpoint
        if endpoint:
            data["endpoint"] = format_address(endpoint)
        networks = iface.routes.networks_of(peer)
        if networks:
            data["allowed_ips"] = [str(n) for n in networks]
        if iface.l2 and peer.allowed_macs:
            data["allowed_macs"] = sorted(m.hex(":") for m in peer.allowed_macs)
        if peer.persistent_keepalive:
            data["persistent_keepalive"] = peer.persistent_keepalive
        peers.append(data)
    return {"interface": interface, "peer": peers}


def write(config: Config, data: dict[str, Any]) -> None:
    """data over config's file, in its format; whole or not at all, mode 0600 (it
    holds keys)."""
    path = Path(config.path)
    if config.format == "wg-quick":
        text = to_wg_quick(data, name=path.name.removesuffix(".conf"))
    else:
        text = to_toml(data)
    write_secret(path, text)
