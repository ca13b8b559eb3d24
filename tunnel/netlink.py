"""Addresses, MTU, link state, routes and bridge membership over rtnetlink
(pyroute2), in the network namespace the process runs in."""

from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .allowed_ips import Network
from .config import Interface


class LinkError(Exception):
    """A link, address or route change the kernel refused."""


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
                if network.prefixlen == 0:
                    # A default route through the tunnel would capture the tunnel's own
                    # UDP packets; that needs policy routing, which pyvpn leaves to the user.
                    warnings.append(f"allowed_ips {network}: default route not installed")
                    continue
                if network in connected:
                    continue
                step = f"add route {network}"
                ipr.route("add", dst=str(network), oif=index)
        except NetlinkError as e:
            raise LinkError(
                f"cannot {step} on {name}: {e.args[1] if len(e.args) > 1 else e}"
            ) from None
    return warnings


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LinkError(f"device {name} vanished")
    return found[0]
