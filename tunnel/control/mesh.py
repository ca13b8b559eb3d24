"""`pyvpn mesh`: one hosts file to a ready config per host, for a full mesh or a hub
and its spokes.

parse_hosts() validates the hosts file's data and configs() turns it, with the keys
kept from an earlier run, into one TOML-shaped config dict per host (the shape that
tunnel/control/config.py's parse() takes); both are sans-IO. Reading the kept keys
and writing the files is write_mesh(), at the end."""

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunnel.control.config import (
    DATAPATHS,
    IFNAME,
    IFNAME_RULE,
    MODES,
    ConfigError,
    _Parser,
    exposed_key_file,
    read_toml,
)
from tunnel.control.convert import ConvertError, to_toml, to_wg_quick
from tunnel.host.routing import InterfaceAddress
from tunnel.host.secret_file import write_secret
from tunnel.host.udp import split_address
from tunnel.protocol import keys
from tunnel.protocol.allowed_ips import Network
from tunnel.protocol.constants import MAX_MTU, MIN_MTU

# What a host's table and the top level (as every host's default) may both set.
SETTINGS = {"mode", "device", "listen_port", "datapath", "mtu", "bridge", "persistent_keepalive"}
TOP_KEYS = SETTINGS | {"hub", "host"}
HOST_KEYS = SETTINGS | {"name", "endpoint", "address", "subnets"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a file name in DIR, too
DEFAULT_PORT = 51820
# wg(8): "a sensible interval that works with a wide variety of firewalls is 25".
DEFAULT_KEEPALIVE = 25
FORMATS = {"toml": ".toml", "wg-quick": ".conf"}


@dataclass
class Host:
    name: str
    where: str  # how errors name its table: "host[2]"
    endpoint: str | None
    addresses: list[InterfaceAddress]
    subnets: list[Network]
    mode: str
    device: str
    listen_port: int
    datapath: str | None
    mtu: int | None
    bridge: str | None
    keepalive: int

    def own(self) -> list[Network]:
        """The networks only this host is reached at: its addresses and its subnets."""
        return [ipaddress.ip_network(a.ip) for a in self.addresses] + self.subnets


@dataclass
class Hosts:
    hosts: list[Host]
    hub: Host | None

    def peers_of(self, host: Host) -> list[Host]:
        if self.hub is None or host is self.hub:
            return [h for h in self.hosts if h is not host]
        return [self.hub]


@dataclass
class HostConfig:
    name: str
    config: dict[str, Any]  # as config.parse() takes it; the key in NAME.key beside it
    private_key: bytes
    new_key: bool
    forwards: list[int]  # the IP versions this host routes between peers or into subnets


def parse_hosts(data: dict[str, Any], path: str = "<hosts>") -> Hosts:
    return _HostsParser(path).hosts(data)


def configs(
    hosts: Hosts,
    kept: Mapping[str, bytes],
    generate: Callable[[], bytes] = keys.generate_private_key,
) -> list[HostConfig]:
    """A config per host: the private key kept for its name, else a new one."""
    private = {h.name: kept.get(h.name) or generate() for h in hosts.hosts}
    public = {name: keys.encode(keys.public_key(k)) for name, k in private.items()}
    out = []
    for host in hosts.hosts:
        peers = [_peer(host, other, public[other.name], _allowed(hosts, host, other))
                 for other in hosts.peers_of(host)]  # fmt: skip
        forwards = sorted({n.version for n in host.subnets})
        if host is hosts.hub and host.mode == "tun":
            forwards = sorted({a.version for h in hosts.hosts for a in h.addresses} | set(forwards))
        data = {"interface": _interface(host), "peer": peers}
        out.append(HostConfig(host.name, data, private[host.name], host.name not in kept, forwards))
    return out


def _interface(host: Host) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": host.device,
        "mode": host.mode,
        "private_key_file": f"{host.name}.key",
        "listen_port": host.listen_port,
    }
    if host.addresses:
        table["address"] = [str(a) for a in host.addresses]
    optional = {"mtu": host.mtu, "bridge": host.bridge, "datapath": host.datapath}
    table.update((k, v) for k, v in optional.items() if v is not None)
    return table


def _peer(host: Host, other: Host, public_key: str, allowed: list[Network]) -> dict[str, Any]:
    peer: dict[str, Any] = {"public_key": public_key}
    if other.endpoint is not None:
        peer["endpoint"] = other.endpoint
    if host.mode == "tun":
        peer["allowed_ips"] = [str(n) for n in allowed]
    # Only a host without an endpoint sits behind a NAT that may forget it; it keeps
    # the mapping open toward the peers it can reach.
    if host.endpoint is None and other.endpoint is not None and host.keepalive:
        peer["persistent_keepalive"] = host.keepalive
    return peer


def _allowed(hosts: Hosts, host: Host, other: Host) -> list[Network]:
    """What `host` sends to `other`: what `other` owns, and a spoke sends the hub the
    whole tunnel network and every other host's subnets."""
    if other is not hosts.hub:
        return other.own()
    networks = other.own() + [a.network for h in hosts.hosts for a in h.addresses]
    networks += [n for h in hosts.hosts if h is not host for n in h.subnets]
    return _collapse(networks)


def _collapse(networks: Iterable[Network]) -> list[Network]:
    networks = list(networks)
    out: list[Network] = []
    for version in (4, 6):
        out += ipaddress.collapse_addresses(n for n in networks if n.version == version)
    return out


class _HostsParser(_Parser):
    """config.py's value parsers, for the keys of a hosts file."""

    def fail(self, key: str, problem: str) -> ConfigError:
        return super().fail(key.lstrip("."), problem)  # a top-level key has no table

    def hosts(self, data: dict[str, Any]) -> Hosts:
        self.only(data, TOP_KEYS, "")
        defaults = self.settings(data, "", {})
        tables = data.get("host")
        if not isinstance(tables, list) or not tables:
            raise self.fail("host", "no hosts: give each host a [[host]] table")
        hosts = [self.host(t, f"host[{i}]", defaults) for i, t in enumerate(tables)]
        first: dict[str, Host] = {}
        for h in hosts:
            other = first.setdefault(h.name, h)
            if other is not h:
                raise self.fail(f"{h.where}.name", f"{h.name!r} is also {other.where}'s name")
            if h.mode != hosts[0].mode:
                raise self.fail(
                    f"{h.where}.mode",
                    f"{h.mode}, but {hosts[0].where} is {hosts[0].mode}: tun and tap hosts "
                    "cannot talk",
                )
        hub = None
        if "hub" in data:
            name = self.string(data, "hub", "", "")
            if name not in first:
                raise self.fail("hub", f"{name!r} is not the name of any host")
            hub = first[name]
        result = Hosts(hosts, hub)
        self.reachable(result)
        if hosts[0].mode == "tun":
            self.disjoint(hosts)
        else:
            self.bridges(result)
        return result

    def settings(self, t: dict[str, Any], where: str, defaults: dict[str, Any]) -> dict[str, Any]:
        """The settings a table gives, over `defaults`; what neither gives is None."""
        s: dict[str, Any] = {
            "mode": self.choice(t, "mode", where, MODES, defaults.get("mode", "tun")),
            "device": self.string(t, "device", where, defaults.get("device", "pyvpn0")),
            "listen_port": self.integer(
                t, "listen_port", where, 0, 65535, defaults.get("listen_port", DEFAULT_PORT)
            ),
            "keepalive": self.integer(
                t, "persistent_keepalive", where, 0, 65535,
                defaults.get("keepalive", DEFAULT_KEEPALIVE),
            ),
        }  # fmt: skip
        if not IFNAME.fullmatch(s["device"]):
            raise self.fail(
                f"{where}.device", f"{s['device']!r} is not a valid device name ({IFNAME_RULE})"
            )
        s["datapath"] = defaults.get("datapath")
        if "datapath" in t:
            s["datapath"] = self.choice(t, "datapath", where, DATAPATHS, "auto")
        s["mtu"] = defaults.get("mtu")
        if "mtu" in t:
            s["mtu"] = self.integer(t, "mtu", where, MIN_MTU, MAX_MTU, 0)
        s["bridge"] = defaults.get("bridge")
        if "bridge" in t:
            s["bridge"] = self.string(t, "bridge", where, "")
            if not IFNAME.fullmatch(s["bridge"]):
                raise self.fail(f"{where}.bridge", f"{s['bridge']!r} is not a valid bridge name")
        return s

    def host(self, t: Any, where: str, defaults: dict[str, Any]) -> Host:
        if not isinstance(t, dict):
            raise self.fail(where, "must be a table")
        self.only(t, HOST_KEYS, where + ".")
        if "name" not in t:
            raise self.fail(f"{where}.name", "missing")
        name = self.string(t, "name", where, "")
        if not NAME.fullmatch(name):
            raise self.fail(
                f"{where}.name", f"{name!r} is not a host name (1-64 of A-Z a-z 0-9 _ . -)"
            )
        s = self.settings(t, where, defaults)
        endpoint = None
        if "endpoint" in t:
            endpoint = self.string(t, "endpoint", where, "")
            try:
                port = split_address(endpoint)[1]
            except ValueError as e:
                raise self.fail(f"{where}.endpoint", str(e)) from None
            if "listen_port" not in t:
                s["listen_port"] = port  # it listens where the others send to
        addresses = [
            self.address(a, f"{where}.address[{i}]")
            for i, a in enumerate(self.string_list(t, "address", where))
        ]
        subnets = [
            self.network(n, f"{where}.subnets[{i}]")
            for i, n in enumerate(self.string_list(t, "subnets", where))
        ]
        if s["mode"] == "tun":
            if not addresses:
                raise self.fail(f"{where}.address", "missing: a tun host needs its tunnel address")
            if s["bridge"] is not None:
                raise self.fail(f"{where}.bridge", "only a tap host can join a bridge")
        else:
            if subnets:
                raise self.fail(
                    f"{where}.subnets",
                    "only in tun mode: in tap mode the hosts behind a host are on its bridge",
                )
            if addresses and s["bridge"] is not None:
                raise self.fail(
                    f"{where}.address",
                    "a tap host on a bridge has its address on the bridge, not on the tunnel "
                    "device: leave it out",
                )
        return Host(
            name, where, endpoint, addresses, subnets, s["mode"], s["device"], s["listen_port"],
            s["datapath"], s["mtu"], s["bridge"], s["keepalive"],
        )  # fmt: skip

    def reachable(self, hosts: Hosts) -> None:
        """Of two peers, one at least must have an endpoint for the other to send to."""
        for i, host in enumerate(hosts.hosts):
            for other in hosts.hosts[:i]:
                if (
                    other in hosts.peers_of(host)
                    and host.endpoint is None
                    and other.endpoint is None
                ):
                    raise self.fail(
                        f"{host.where}.endpoint",
                        f"missing: {other.where} ({other.name}) has none either, so neither "
                        "can reach the other",
                    )

    def disjoint(self, hosts: list[Host]) -> None:
        """No two hosts claim one address: each network routes to one host."""
        tunnel_networks = [(a.network, h) for h in hosts for a in h.addresses]
        owners: list[tuple[Network, Host]] = []
        for h in hosts:
            claims = [(ipaddress.ip_network(a.ip), f"address[{i}]")
                      for i, a in enumerate(h.addresses)]  # fmt: skip
            claims += [(n, f"subnets[{i}]") for i, n in enumerate(h.subnets)]
            for network, key in claims:
                taken = [(n, o) for n, o in owners if o is not h and _overlap(n, network)]
                if key.startswith("subnets"):
                    taken += [(n, o) for n, o in tunnel_networks if _overlap(n, network)]
                if taken:
                    n, o = taken[0]
                    raise self.fail(
                        f"{h.where}.{key}", f"{network} overlaps {o.where}'s {n} ({o.name})"
                    )
                owners.append((network, h))

    def bridges(self, hosts: Hosts) -> None:
        """tap: a pyvpn device on a bridge has its port in hairpin mode (docs/tap.md), so
        the bridge sends back to pyvpn what came from one peer, for the others."""
        if hosts.hub is None:
            for h in hosts.hosts:
                if h.bridge is not None:
                    raise self.fail(
                        f"{h.where}.bridge",
                        "in a full tap mesh a bridge would send every peer's frames on to "
                        "the others again: bridge the hosts of a hub and spokes (hub = ...)",
                    )
        elif hosts.hub.bridge is None:
            raise self.fail(
                f"{hosts.hub.where}.bridge",
                "missing: a tap hub relays frames between its spokes through a bridge",
            )


def _overlap(a: Network, b: Network) -> bool:
    return a.version == b.version and a.overlaps(b)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# At the edge: the kept keys read from DIR, the files written there.


def kept_keys(out: Path, names: Iterable[str]) -> tuple[dict[str, bytes], list[str]]:
    """The private keys an earlier run left in DIR/NAME.key, and warnings (a key
    file others may read). Two hosts with one key would be one peer to the rest:
    an error."""
    kept: dict[str, bytes] = {}
    warnings = []
    holder: dict[bytes, Path] = {}
    for name in names:
        path = out / f"{name}.key"
        try:
            with open(path, "rb") as f:
                text, mode = f.read().decode("ascii"), os.fstat(f.fileno()).st_mode
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or e
            raise ConfigError(str(path), "", f"cannot read: {reason}") from None
        try:
            key = keys.decode(text)
        except keys.InvalidKey as e:
            raise ConfigError(str(path), "", f"does not hold a key: {e}") from None
        first = holder.setdefault(key, path)
        if first != path:
            raise ConfigError(
                str(path), "", f"holds the same key as {first}: each host needs a key of its "
                "own (remove one file, and the next run makes a new key for it)",
            )  # fmt: skip
        kept[name] = key
        exposed = exposed_key_file(str(path), mode)
        if exposed:
            warnings.append(exposed)
    return kept, warnings


def render(host: HostConfig, fmt: str) -> str:
    if fmt == "toml":
        return to_toml(host.config)
    # wg-quick has no key file: the key goes in, and the interface takes the file's name.
    interface = dict(host.config["interface"])
    del interface["private_key_file"], interface["name"]
    data = {**host.config, "interface": {"private_key": keys.encode(host.private_key), **interface}}
    try:
        return to_wg_quick(data, host.config["interface"]["name"])
    except ConvertError as e:
        raise ConfigError("--format wg-quick", "", f"{host.name}: {e}") from None


def config_path(out: Path, host: HostConfig, fmt: str) -> Path:
    """DIR/NAME.toml; or, since wg-quick names the device after its file and the
    hosts may share one device name, DIR/NAME/DEVICE.conf."""
    if fmt == "toml":
        return out / f"{host.name}{FORMATS[fmt]}"
    return out / host.name / f"{host.config['interface']['name']}{FORMATS[fmt]}"


def write_mesh(hosts_path: str, out_dir: str, fmt: str) -> tuple[list[str], list[str]]:
    """Write DIR/NAME.key (new keys only) and each host's config (config_path());
    what to tell the user, a line each, and warnings. Everything is checked before
    anything is written."""
    hosts = parse_hosts(read_toml(hosts_path), hosts_path)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(out_dir, "", "is not a directory")
    kept, warnings = kept_keys(out, [h.name for h in hosts.hosts])
    planned = configs(hosts, kept)
    texts = [render(h, fmt) for h in planned]
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for host, text in zip(planned, texts, strict=True):
        if host.new_key:
            write_secret(out / f"{host.name}.key", keys.encode(host.private_key) + "\n")
        path = config_path(out, host, fmt)
        path.parent.mkdir(exist_ok=True)
        write_secret(path, text)
        lines.append(f"{path} ({'new key' if host.new_key else 'key kept'})")
    for host in planned:
        if host.forwards:
            sysctls = {4: "net.ipv4.ip_forward=1", 6: "net.ipv6.conf.all.forwarding=1"}
            lines.append(
                f"{host.name} routes for its peers: turn on IP forwarding there: sysctl -w "
                + " ".join(sysctls[v] for v in host.forwards)
            )
    return lines, warnings
