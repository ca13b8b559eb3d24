"""Addresses, MTU, link state, routes and bridge membership over rtnetlink
(pyroute2), in the network namespace the process runs in."""

import contextlib
import errno
import ipaddress
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .allowed_ips import Network
from .config import Interface


class LinkError(Exception):
    """A link, address or route change the kernel refused (errno: the kernel's)."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = code


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def configure(
    name: str,
    mtu: int,
    addresses: Iterable[Interface],
    routes: Iterable[Network],
    bridge: str | None,
) -> list[str]:
    """Bring the device up with its addresses and a route per allowed network.
    Returns warnings for routes deliberately not installed.

    `mtu` is the tunnel's. A device joining a bridge gets the segment's MTU if that
    is larger: a bridge drops a frame bigger than the port's MTU without a trace,
    so the device takes the frames the segment's hosts send and pyvpn answers the
    ones too big for the tunnel with an ICMP error (tunnel/pmtu.py)."""
    warnings: list[str] = []
    with IPRoute() as ipr:
        index = _index(ipr, name)
        step = "set the MTU"
        try:
            master = None
            if bridge is not None:
                found = ipr.link_lookup(ifname=bridge)
                if not found:
                    raise LinkError(f"bridge {bridge} does not exist")
                master = found[0]
                # Read before attaching: afterwards the bridge follows its smallest port.
                mtu = max(mtu, ipr.get_links(master)[0].get("IFLA_MTU"))
            ipr.link("set", index=index, mtu=mtu)
            if master is not None:
                step = f"attach to bridge {bridge}"
                ipr.link("set", index=index, master=master)
            for address in addresses:
                step = f"add address {address}"
                ipr.addr(
                    "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
                )
            step = "bring the link up"
            ipr.link("set", index=index, state="up")
            connected = [a.network for a in addresses]
            for network in routes:
                if _routed(network, connected, warnings):
                    step = f"add route {network}"
                    ipr.route("add", dst=str(network), oif=index)
        except NetlinkError as e:
            raise LinkError(f"cannot {step} on {name}: {_reason(e)}") from None
    return warnings


def update_routes(name: str, add: Iterable[Network], remove: Iterable[Network]) -> list[str]:
    """Follow a change of the allowed networks on a running tunnel. Returns warnings
    as configure does; a route the kernel refuses raises LinkError."""
    warnings: list[str] = []
    with IPRoute() as ipr:
        index = _index(ipr, name)
        connected = [
            ipaddress.ip_interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}").network
            for a in ipr.get_addr(index=index)
        ]
        for network in remove:
            if _routed(network, connected, []):
                with contextlib.suppress(NetlinkError):  # already gone: fine
                    ipr.route("del", dst=str(network), oif=index)
        for network in add:
            if _routed(network, connected, warnings):
                try:
                    ipr.route("add", dst=str(network), oif=index)
                except NetlinkError as e:
                    raise LinkError(
                        f"cannot add route {network} on {name}: {_reason(e)}", e.code
                    ) from None
    return warnings


def _routed(network: Network, connected: list[Network], warnings: list[str]) -> bool:
    """Whether an allowed network gets a route through the device."""
    if network.prefixlen == 0:
        # A default route through the tunnel would capture the tunnel's own
        # UDP packets; that needs policy routing, which pyvpn leaves to the user.
        warnings.append(f"allowed_ips {network}: default route not installed")
        return False
    return network not in connected  # the address's own prefix route covers it


def _reason(e: NetlinkError) -> str:
    return str(e.args[1] if len(e.args) > 1 else e)


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LinkError(f"device {name} vanished")
    return found[0]
