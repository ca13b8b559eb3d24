"""The peer config file (TOML, wg-quick's keys in snake_case, or wg-quick's own INI
file), validated into plain objects. Every error names the file, the key and what
is wrong, in one line."""

import codecs
import ipaddress
import os
import pwd
import re
import socket
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunnel.control import wg_quick
from tunnel.control.wg_quick import shown
from tunnel.host.resolvconf import NAMESERVER
from tunnel.host.routing import RESERVED_TABLES, RT_TABLE_LOCAL, RT_TABLE_MAIN, InterfaceAddress
from tunnel.host.udp import is_name, resolve, split_address
from tunnel.planes.workers import AUTO, workers_setting
from tunnel.protocol import keys
from tunnel.protocol.address import Address
from tunnel.protocol.allowed_ips import Network
from tunnel.protocol.constants import DEFAULT_MAC_AGEING, MAX_MTU, MIN_MTU
from tunnel.protocol.peer_config import PeerConfig

# A device name: IFNAMSIZ - 1 of the characters wg-quick takes in one (no '/', ':' or
# spaces). Every pattern here is matched whole: "$" would also take a trailing "\n".
IFNAME, IFNAME_RULE = wg_quick.IFNAME, wg_quick.IFNAME_RULE
MODES = ("tun", "tap")
DATAPATHS = ("auto", "native", "python")
INTERFACE_KEYS = {
    "name",
    "mode",
    "private_key",
    "private_key_file",
    "listen_port",
    "address",
    "mtu",
    "bridge",
    "datapath",
    "workers",
    "mac_ageing",
    "user",
    "fwmark",
    "table",
    "dns",
    "pre_up",
    "post_up",
    "pre_down",
    "post_down",
    "save_config",
}
DOMAIN = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")
LOW_ORDER = "is a low-order point, with which no handshake can ever succeed"
PEER_KEYS = {
    "public_key",
    "preshared_key",
    "preshared_key_file",
    "endpoint",
    "allowed_ips",
    "allowed_macs",
    "persistent_keepalive",
}


MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def parse_mac(text: str) -> bytes:
    """A unicast MAC address written aa:bb:cc:dd:ee:ff; ValueError says what is wrong."""
    if not MAC.fullmatch(text):
        raise ValueError(f"{text[:40]!r} is not a MAC address like 02:00:00:00:00:01")
    mac = bytes.fromhex(text.replace(":", ""))
    if mac[0] & 1:
        raise ValueError(f"{text} is a group address, which is nobody's source")
    return mac


class ConfigError(Exception):
    """One line: the file, the key and the problem. The file's name and the key are
    user text, quoted where a terminal would act on them (wg_quick.shown); so is
    any user text the problem quotes."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        path, key = shown(path), shown(key)
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")


@dataclass
class InterfaceConfig:
    private_key: bytes
    name: str = "pyvpn0"
    mode: str = "tun"
    listen_port: int = 0
    addresses: list[InterfaceAddress] = field(default_factory=list)
    mtu: int | None = None  # None: from the underlay, as wg-quick does (daemon.tunnel_mtu)
    bridge: str | None = None
    datapath: str = "auto"
    mac_ageing: float = DEFAULT_MAC_AGEING
    user: str | None = None  # drop root to this user after setup (tunnel/host/privileges.py)
    fwmark: int = 0  # on the tunnel's own datagrams; a full tunnel's routing table too
    # Where allowed_ips are routed, as wg-quick's Table: "auto" (the main table, and a
    # full tunnel for a default route), "off" (nowhere), or a table number.
    table: str | int = "auto"
    dns: list[str] = field(default_factory=list)  # nameservers and search domains, in order
    # Shell commands run with %i as the name, when wg-quick runs them (host/hooks.py).
    hooks: dict[str, list[str]] = field(default_factory=dict)
    save_config: bool = False  # write the running config back to the file on down
    workers: int | str = "auto"  # crypto workers beside the I/O worker (planes/workers.py)

    @property
    def l2(self) -> bool:
        return self.mode == "tap"


@dataclass
class Config:
    path: str
    interface: InterfaceConfig
    peers: list[PeerConfig]
    warnings: list[str] = field(default_factory=list)
    format: str = "toml"  # or "wg-quick": the file's, which SaveConfig writes back
    data: dict[str, Any] = field(default_factory=dict)  # what was parsed (Source.data)
    # A fleet host's [fleet] table, as written: tunnel/fleet/settings.py reads it
    # (the fleet is a layer above this one).
    fleet: dict[str, Any] | None = None


# Where a TOML key was written, as an error shows it: ("wg0.conf:7", "AllowedIPs").
Locate = Callable[[str], tuple[str, str]]


@dataclass
class Source:
    """A config file read but not yet validated: the TOML-shaped dict that parse()
    takes, whichever format the file is in."""

    path: str
    data: dict[str, Any]
    format: str
    locate: Locate
    warnings: list[str] = field(default_factory=list)


# Where a bare interface name is looked up, as `wg-quick up wg0` finds
# /etc/wireguard/wg0.conf (wg-quick(8)); pyvpn's own directory first, so that a
# file converted there takes over from the wg-quick file it came from.
CONFIG_DIRS = ((Path("/etc/pyvpn"), ".toml"), (Path("/etc/wireguard"), ".conf"))


def is_bare_name(argument: str) -> bool:
    """Whether a config argument is a bare interface name: one wg-quick would look
    up (IFNAME), and not ending in .conf or .toml, which name files (wg-quick
    would look for wg0.conf.conf)."""
    suffixes = tuple(suffix for _, suffix in CONFIG_DIRS)
    return bool(IFNAME.fullmatch(argument)) and not argument.endswith(suffixes)


def config_file(argument: str) -> tuple[str, list[str]]:
    """The file a command line's config argument names, and warnings: for a bare
    interface name, NAME.toml in /etc/pyvpn or else NAME.conf in /etc/wireguard,
    never a file in the current directory (a root shell's cwd may be anyone's,
    and a TOML file there runs its hooks); anything else is a path, as given, so
    a file here is named ./NAME or NAME.toml."""
    if not is_bare_name(argument):
        return argument, []
    tried = [directory / f"{argument}{suffix}" for directory, suffix in CONFIG_DIRS]
    try:
        found = [str(f) for f in tried if f.is_file()]
    except OSError as e:  # /etc/wireguard is often root's alone: EACCES for others
        raise ConfigError(argument, "", f"cannot look it up: {e.strerror}") from None
    if not found:
        where = " nor ".join(str(f) for f in tried)
        here = ""
        if os.path.isfile(argument):
            here = f" (a bare name is never a file here: for that one, say ./{argument})"
        raise ConfigError(argument, "", f"no {where}{here}")
    return found[0], [f"{shown(found[0])}: warning: read, not {shown(str(f))}" for f in found[1:]]


def read(path: str) -> Source:
    path, warnings = config_file(path)
    text, mode = _text(path)
    found = source(text, path)
    found.warnings += warnings
    if mode & stat.S_IRWXO and (found.format == "wg-quick" or _inline_secret(found.data)):
        # As wg-quick warns of its file, which holds the private key; a TOML file
        # may keep its keys in key files instead, which key_file() checks.
        found.warnings.append(f"{shown(path)}: warning: world accessible; chmod 600 it")
    return found


def _inline_secret(data: dict[str, Any]) -> bool:
    """Whether TOML-shaped data holds a private or preshared key itself."""
    interface, peers = data.get("interface"), data.get("peer")
    tables = [interface] + (peers if isinstance(peers, list) else [])
    keys_in = ("private_key", "preshared_key")
    return any(isinstance(t, dict) and any(k in t for k in keys_in) for t in tables)


def read_toml(path: str) -> dict[str, Any]:
    """A TOML file's data (mesh's hosts file); ConfigError says why there is none."""
    return _toml(_text(path)[0], path)


def _text(path: str) -> tuple[str, int]:
    """The file's text and mode. Bytes that are not UTF-8 stay as surrogates
    (surrogateescape), for the format's parser to say where they are: a wg-quick
    file may have them in comments, as wg-quick reads bytes."""
    try:
        with open(path, "rb") as f:
            data, mode = f.read(), os.fstat(f.fileno()).st_mode
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    if data.startswith(codecs.BOM_UTF8):
        # wg-quick would read "\ufeff[Interface]" as no section, and wg refuse it.
        raise ConfigError(
            path, "", "starts with a UTF-8 byte order mark, which neither wg-quick nor TOML "
            "reads: save it without one",
        )  # fmt: skip
    return data.decode("utf-8", "surrogateescape"), mode


def source(text: str, path: str) -> Source:
    """The text of a config file named path, in whichever format it is."""
    if wg_quick.is_wg_quick(text):
        try:
            ini = wg_quick.read(text, path)
        except wg_quick.IniError as e:
            raise ConfigError(_at(path, e.line), e.key, e.problem) from None

        def locate(key: str) -> tuple[str, str]:
            line, shown = ini.locate(key)
            return _at(path, line), shown

        return Source(path, ini.data, "wg-quick", locate)
    return Source(path, _toml(text, path), "toml", lambda key: (path, key))


def _toml(text: str, path: str) -> dict[str, Any]:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        line = text.count("\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}", "", "not UTF-8 text, which a TOML file is") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None


def _at(path: str, line: int | None) -> str:
    return path if line is None else f"{path}:{line}"


def load(path: str) -> Config:
    return load_source(read(path))


def load_source(source: Source) -> Config:
    config = parse(source.data, source.path, source.locate)
    config.format, config.data = source.format, source.data
    config.warnings[:0] = source.warnings
    return config


def parse(data: dict[str, Any], path: str = "<config>", locate: Locate | None = None) -> Config:
    return _Parser(path, locate).config(data)


def exposed_key_file(path: str, mode: int) -> str | None:
    """The warning for a key file others may read or write, as wg(8) warns of a
    secret written where others can read it; a warning, not an error."""
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    return (
        f"{shown(path)}: warning: key file is accessible by others "
        f"(mode {stat.S_IMODE(mode):o}); chmod 600 it"
    )


class _Parser:
    def __init__(self, path: str, locate: Locate | None = None) -> None:
        self.path = path
        self.locate = locate or (lambda key: (path, key))  # a TOML key is where it says
        self.base = Path(path).parent
        self.warnings: list[str] = []

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(*self.locate(key), problem)

    def warn(self, key: str, problem: str) -> None:
        where, written = self.locate(key)
        self.warnings.append(f"{shown(where)}: {shown(written)}: {problem}")

    def config(self, data: dict[str, Any]) -> Config:
        self.only(data, {"interface", "peer", "fleet"}, "")
        fleet = data.get("fleet")
        if fleet is not None and not isinstance(fleet, dict):
            raise self.fail("fleet", "must be a table")
        section = data.get("interface")
        if not isinstance(section, dict):
            raise self.fail("interface", "missing [interface] section")
        interface = self.interface(section)
        peers_data = data.get("peer", [])
        if not isinstance(peers_data, list):
            raise self.fail("peer", "peers are written as [[peer]] tables")
        peers = [self.peer(p, i, interface) for i, p in enumerate(peers_data)]
        seen: set[bytes] = set()
        own = keys.public_key(interface.private_key) if any(interface.private_key) else None
        for i, p in enumerate(peers):
            if p.public_key in seen:
                raise self.fail(f"peer[{i}].public_key", "the same peer is listed twice")
            if p.public_key == own:
                raise self.fail(f"peer[{i}].public_key", "is this interface's own public key")
            seen.add(p.public_key)
        # As in wg, a network listed twice belongs to the peer listed last.
        owners: dict[Network, int] = {}
        for i, p in enumerate(peers):
            for network in p.allowed_ips:
                before = owners.get(network, i)
                if before != i:
                    self.warn(
                        f"peer[{i}].allowed_ips",
                        f"{network} is also in peer[{before}]'s; peer[{i}], listed later, gets it",
                    )
                owners[network] = i
        bound: dict[bytes, int] = {}
        for i, p in enumerate(peers):
            for mac in p.allowed_macs:
                if bound.setdefault(mac, i) != i:
                    raise self.fail(
                        f"peer[{i}].allowed_macs",
                        f"{mac.hex(':')} is also in peer[{bound[mac]}]'s: a MAC address "
                        "is bound to one peer",
                    )
        self.full_tunnel_table(interface, peers)
        return Config(self.path, interface, peers, self.warnings, fleet=fleet)

    def full_tunnel_table(self, interface: InterfaceConfig, peers: list[PeerConfig]) -> None:
        """A full tunnel names its routing table after the fwmark (as wg-quick does),
        so the mark must not be one of the kernel's own tables."""
        full = any(n.prefixlen == 0 for p in peers for n in p.allowed_ips)
        if full and interface.table == "auto" and interface.fwmark in RESERVED_TABLES:
            raise self.fail(
                "interface.fwmark",
                f"{interface.fwmark} is the kernel's {RESERVED_TABLES[interface.fwmark]} "
                "routing table, which a full tunnel (a /0 in allowed_ips) would take over",
            )

    def only(self, table: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(prefix + key, "unknown key")

    def interface(self, t: dict[str, Any]) -> InterfaceConfig:
        self.only(t, INTERFACE_KEYS, "interface.")
        name = self.string(t, "name", "interface", "pyvpn0")
        if not IFNAME.fullmatch(name):
            raise self.fail(
                "interface.name", f"{name!r} is not a valid device name ({IFNAME_RULE})"
            )
        mode = self.choice(t, "mode", "interface", MODES, "tun")
        private_key = self.key(t, "private_key", "interface", required=False)
        if private_key is None or not any(private_key):
            # As wg-quick allows it: the key comes later (`wg set NAME private-key`,
            # often from PostUp), and until then no handshake is made or answered.
            self.warn(
                "interface.private_key",
                f"none: {name} makes and answers no handshakes until "
                f"`wg set {name} private-key FILE` gives it one",
            )
            private_key = bytes(32)
        port = self.integer(t, "listen_port", "interface", 0, 65535, 0)
        addresses = [
            self.address(a, f"interface.address[{i}]")
            for i, a in enumerate(self.string_list(t, "address", "interface"))
        ]
        mtu = None
        if "mtu" in t:
            mtu = self.integer(t, "mtu", "interface", MIN_MTU, MAX_MTU, 0)
            if mtu < 1280 and any(a.version == 6 for a in addresses):
                raise self.fail("interface.mtu", "IPv6 addresses need an MTU of at least 1280")
        bridge = t.get("bridge")
        if bridge is not None:
            if mode != "tap":
                raise self.fail("interface.bridge", "only a tap interface can join a bridge")
            if not isinstance(bridge, str) or not IFNAME.fullmatch(bridge):
                raise self.fail("interface.bridge", f"{bridge!r} is not a valid bridge name")
        datapath = self.choice(t, "datapath", "interface", DATAPATHS, "auto")
        try:
            workers = workers_setting(t.get("workers", AUTO))
        except ValueError as e:
            raise self.fail("interface.workers", str(e)) from None
        ageing = self.integer(t, "mac_ageing", "interface", 1, 86400, DEFAULT_MAC_AGEING)
        user = None
        if "user" in t:
            user = self.string(t, "user", "interface", "")
            try:
                pwd.getpwnam(user)
            except KeyError:
                raise self.fail("interface.user", f"no such user {user!r}") from None
        fwmark = self.integer(t, "fwmark", "interface", 0, 0xFFFFFFFF, 0)
        dns = [
            self.dns(d, f"interface.dns[{i}]")
            for i, d in enumerate(self.string_list(t, "dns", "interface"))
        ]
        hooks = {}
        for hook in wg_quick.HOOKS:
            commands = self.string_list(t, hook, "interface")
            for i, command in enumerate(commands):
                if "\0" in command:
                    raise self.fail(f"interface.{hook}[{i}]", "holds a NUL byte")
            if commands:
                hooks[hook] = commands
        save = t.get("save_config", False)
        if not isinstance(save, bool):
            raise self.fail("interface.save_config", f"must be true or false, got {save!r}")
        if user is not None:
            # These act after setup, once root is gone (tunnel/host/privileges.py).
            for key in ("post_up", "pre_down", "post_down", "dns", "save_config"):
                if t.get(key):
                    raise self.fail(
                        f"interface.{key}", "needs root after setup, which user gives up"
                    )
        return InterfaceConfig(
            private_key, name, mode, port, addresses, mtu, bridge, datapath, float(ageing), user,
            fwmark, self.table(t.get("table", "auto")), dns, hooks, save, workers,
        )  # fmt: skip

    def dns(self, value: str, key: str) -> str:
        if NAMESERVER.search(value):
            # ipaddress takes any text after "%" as an IPv6 scope, a newline too,
            # which resolv.conf would read as a line of its own.
            scope = value.partition("%")[2]
            try:
                ipaddress.ip_address(value)
                if scope and not IFNAME.fullmatch(scope):
                    raise ValueError(scope)
            except ValueError:
                raise self.fail(key, f"{value!r} is not a nameserver's IP address") from None
        elif not DOMAIN.fullmatch(value):
            raise self.fail(key, f"{value!r} is neither an IP address nor a search domain")
        return value

    def table(self, value: Any) -> str | int:
        if value in ("auto", "off"):
            return value
        if value == "main":
            return RT_TABLE_MAIN
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 0xFFFFFFFF:
            raise self.fail(
                "interface.table",
                f'must be "auto", "off", "main" or a table number from 1 to 4294967295, '
                f"got {value!r}",
            )
        if value == RT_TABLE_LOCAL:
            raise self.fail("interface.table", "255 is the kernel's local table")
        return value

    def peer(self, t: Any, index: int, interface: InterfaceConfig) -> PeerConfig:
        where = f"peer[{index}]"
        if not isinstance(t, dict):
            raise self.fail(where, "must be a table")
        self.only(t, PEER_KEYS, where + ".")
        public_key = self.key(t, "public_key", where, required=True, allow_file=False)
        assert public_key is not None
        if keys.low_order(public_key):
            raise self.fail(f"{where}.public_key", LOW_ORDER)
        psk = self.key(t, "preshared_key", where, required=False)
        endpoint = endpoint_name = None
        if "endpoint" in t:
            endpoint, endpoint_name = self.endpoint(t["endpoint"], f"{where}.endpoint")
        allowed = [
            self.network(n, f"{where}.allowed_ips[{i}]")
            for i, n in enumerate(self.string_list(t, "allowed_ips", where))
        ]
        if interface.mode == "tap" and allowed:
            self.warn(
                f"{where}.allowed_ips", "ignored in tap mode (frames are switched by MAC address)"
            )
            allowed = []
        macs = []
        for i, text in enumerate(self.string_list(t, "allowed_macs", where)):
            try:
                macs.append(parse_mac(text))
            except ValueError as e:
                raise self.fail(f"{where}.allowed_macs[{i}]", str(e)) from None
        if interface.mode == "tun" and macs:
            self.warn(
                f"{where}.allowed_macs", "ignored in tun mode (packets are routed by IP address)"
            )
            macs = []
        keepalive = self.integer(t, "persistent_keepalive", where, 0, 65535, 0)
        return PeerConfig(
            public_key, psk, endpoint, allowed, keepalive, allowed_macs=macs,
            endpoint_name=endpoint_name,
        )  # fmt: skip

    # Value parsers.

    def string(self, t: dict[str, Any], key: str, where: str, default: str) -> str:
        value = t.get(key, default)
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key}", f"must be a string, got {value!r}")
        return value

    def choice(
        self, t: dict[str, Any], key: str, where: str, options: tuple[str, ...], default: str
    ) -> str:
        value = self.string(t, key, where, default)
        if value not in options:
            raise self.fail(f"{where}.{key}", f"must be one of {', '.join(options)}; got {value!r}")
        return value

    def integer(
        self, t: dict[str, Any], key: str, where: str, low: int, high: int, default: int
    ) -> int:
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(
                f"{where}.{key}", f"must be a whole number from {low} to {high}, got {value!r}"
            )
        return value

    def string_list(self, t: dict[str, Any], key: str, where: str) -> list[str]:
        value = t.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{where}.{key}", "must be a list of strings")
        return value

    def key(
        self, t: dict[str, Any], key: str, where: str, required: bool, allow_file: bool = True
    ) -> bytes | None:
        file_key = key + "_file"
        if allow_file and key in t and file_key in t:
            raise self.fail(f"{where}.{key}", f"give either {key} or {file_key}, not both")
        if allow_file and file_key in t:
            return self.key_file(t[file_key], f"{where}.{file_key}")
        if key not in t:
            if required:
                raise self.fail(f"{where}.{key}", "missing")
            return None
        try:
            return keys.decode(self.string(t, key, where, ""))
        except keys.InvalidKey as e:
            raise self.fail(f"{where}.{key}", f"not a key: {e}") from None

    def key_file(self, value: Any, key: str) -> bytes:
        if not isinstance(value, str):
            raise self.fail(key, "must be a file name")
        path = self.base / value
        try:
            text = path.read_text(encoding="ascii")
            mode = os.stat(path).st_mode
        except (OSError, UnicodeDecodeError) as e:
            raise self.fail(
                key, f"cannot read {str(path)!r}: {getattr(e, 'strerror', None) or e}"
            ) from None
        exposed = exposed_key_file(str(path), mode)
        if exposed:
            self.warnings.append(exposed)
        try:
            return keys.decode(text)
        except keys.InvalidKey as e:
            raise self.fail(key, f"{str(path)!r} does not hold a key: {e}") from None

    def address(self, value: str, key: str) -> InterfaceAddress:
        try:
            return ipaddress.ip_interface(value)
        except ValueError:
            raise self.fail(
                key, f"{value!r} is not an address with prefix, like 10.0.0.1/24"
            ) from None

    def network(self, value: str, key: str) -> Network:
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise self.fail(key, f"{value!r} is not a network, like 10.0.0.2/32") from None

    def endpoint(self, value: Any, key: str) -> tuple[Address | None, Address | None]:
        """The endpoint's address, and (name, port) if the host is a name. A name that
        cannot be resolved for now (no DNS yet, as at boot) leaves the address to
        tunnel/control/reresolve.py; one that does not exist is an error."""
        if not isinstance(value, str):
            raise self.fail(key, "must be a string like 192.0.2.1:51820 or [2001:db8::1]:51820")
        try:
            host, port = split_address(value)
        except ValueError as e:
            raise self.fail(key, str(e)) from None
        try:
            address = resolve(host, port)
        except socket.gaierror as e:
            if e.errno != socket.EAI_AGAIN:
                raise self.fail(key, f"cannot resolve {host!r}: {e.strerror}") from None
            self.warn(
                key,
                f"cannot resolve {host!r} for now ({e.strerror}); tried again every 30 s "
                "until it resolves",
            )
            return None, (host, port)
        except (OSError, UnicodeError) as e:
            raise self.fail(key, f"cannot resolve {host!r}: {e}") from None
        return address, (host, port) if is_name(host) else None
