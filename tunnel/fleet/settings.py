"""A fleet's settings: the `[fleet]` table of fleet.toml, which `pyvpn fleet
admit --out` copies into each host's config. It names the registry (etcd's
client URLs and the key prefix, and TLS files for an etcd that asks for them),
the fleet's public key (Ed25519), and the STUN and TURN servers.

Errors are config errors (tunnel/control/config.py's ConfigError): one line
naming the file and the key."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tunnel.control.config import Config, ConfigError, _Parser, read_toml
from tunnel.host.udp import split_address
from tunnel.protocol import keys

from . import record

FLEET_FILE = "fleet.toml"
KEY_FILE = "fleet.key"
# Files the table names, relative to its file's directory.
FILES = ("ca_file", "cert_file", "key_file", "password_file")
KEYS = {"registry", "prefix", "public_key", "stun", "relay", "user", *FILES}
# An etcd key prefix: absolute, no empty or dot segments, no trailing slash.
PREFIX = re.compile(r"(/[A-Za-z0-9_.-]+)+")
PREFIX_RULE = "an absolute key path like /pyvpn/office, of letters, digits, '_', '.' and '-'"
RELAY = re.compile(r"turn:([^:@]+):(.+)@([^@]+)")


@dataclass(frozen=True)
class Relay:
    """A TURN server and the long-term credentials to allocate on it."""

    user: str
    password: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"turn:{self.user}:{self.password}@{_host_port(self.host, self.port)}"


@dataclass(frozen=True)
class FleetSettings:
    registry: tuple[str, ...]  # etcd client URLs, tried in order
    prefix: str  # every key of the fleet is under it
    public_key: bytes  # Ed25519, the key that signs the fleet's records
    stun: tuple[str, int] | None = None
    relay: Relay | None = None
    # TLS toward etcd: the CA that signed its certificate, and a client certificate.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # etcd's own authentication: a user and the file holding its password.
    user: str | None = None
    password_file: str | None = None

    def verifier(self) -> Ed25519PublicKey:
        return record.decode_fleet_public(keys.encode(self.public_key))

    def table(self) -> dict[str, Any]:
        """The `[fleet]` table that parses back to these settings."""
        table: dict[str, Any] = {
            "registry": list(self.registry),
            "prefix": self.prefix,
            "public_key": keys.encode(self.public_key),
        }
        if self.stun is not None:
            table["stun"] = _host_port(*self.stun)
        if self.relay is not None:
            table["relay"] = str(self.relay)
        for key in ("user", *FILES):
            if getattr(self, key) is not None:
                table[key] = getattr(self, key)
        return table


def parse(table: Any, path: str) -> FleetSettings:
    """The `[fleet]` table of the file at path; ConfigError names the key at fault.
    File names in it are taken relative to the file's directory."""
    p = _Parser(path)
    if not isinstance(table, dict):
        raise p.fail("fleet", "must be a table")
    p.only(table, KEYS, "fleet.")
    if "registry" not in table:
        raise p.fail("fleet.registry", "missing: the etcd client URLs, like http://10.0.0.1:2379")
    registry = p.string_list(table, "registry", "fleet")
    if not registry:
        raise p.fail("fleet.registry", "names no etcd client URL")
    for i, url in enumerate(registry):
        problem = url_problem(url)
        if problem:
            raise p.fail(f"fleet.registry[{i}]", problem)
    if "prefix" not in table:
        raise p.fail("fleet.prefix", "missing: where the fleet's keys live in etcd, like /pyvpn/a")
    prefix = p.string(table, "prefix", "fleet", "")
    if not PREFIX.fullmatch(prefix) or "/./" in prefix + "/" or "/../" in prefix + "/":
        raise p.fail("fleet.prefix", f"{prefix[:60]!r} is not {PREFIX_RULE}")
    public_key = p.key(table, "public_key", "fleet", required=True, allow_file=False)
    assert public_key is not None
    try:
        record.decode_fleet_public(keys.encode(public_key))
    except ValueError as e:
        raise p.fail("fleet.public_key", f"not an Ed25519 public key: {e}") from None
    stun = relay = None
    if "stun" in table:
        stun = parse_stun(p.string(table, "stun", "fleet", ""), p)
    if "relay" in table:
        relay = parse_relay(p.string(table, "relay", "fleet", ""), p)
    files = {}
    for key in FILES:
        if key in table:
            name = Path(path).parent / p.string(table, key, "fleet", "")
            if not name.is_file():
                raise p.fail(f"fleet.{key}", f"{str(name)!r} is no file")
            files[key] = str(name)
    if ("cert_file" in files) != ("key_file" in files):
        raise p.fail("fleet.cert_file", "a client certificate needs both cert_file and key_file")
    user = p.string(table, "user", "fleet", "") or None
    if (user is None) != ("password_file" not in files):
        raise p.fail("fleet.user", "etcd's authentication needs both user and password_file")
    return FleetSettings(
        tuple(registry), prefix, public_key, stun, relay,
        files.get("ca_file"), files.get("cert_file"), files.get("key_file"),
        user, files.get("password_file"),
    )  # fmt: skip


def url_problem(url: str) -> str | None:
    """What is wrong with an etcd client URL, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"{url[:60]!r} is not a URL: {e}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url[:60]!r} is not an etcd client URL like http://10.0.0.1:2379"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return f"{url[:60]!r}: an etcd client URL is scheme, host and port only"
    if port is None:
        return f"{url[:60]!r} has no port (etcd's is 2379)"
    return None


def parse_stun(text: str, p: _Parser) -> tuple[str, int]:
    try:
        return split_address(text)
    except ValueError as e:
        raise p.fail("fleet.stun", f"{e}, like stun.example.net:3478") from None


def parse_relay(text: str, p: _Parser) -> Relay:
    match = RELAY.fullmatch(text)
    if not match:
        raise p.fail("fleet.relay", "is not turn:USER:PASSWORD@HOST:PORT")
    try:
        host, port = split_address(match.group(3))
    except ValueError as e:
        raise p.fail("fleet.relay", str(e)) from None
    return Relay(match.group(1), match.group(2), host, port)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_fleet_file(directory: str) -> FleetSettings:
    """DIR/fleet.toml, which holds a `[fleet]` table and nothing else."""
    path = str(Path(directory) / FLEET_FILE)
    data = read_toml(path)
    _Parser(path).only(data, {"fleet"}, "")
    if "fleet" not in data:
        raise ConfigError(path, "fleet", "missing [fleet] table")
    return parse(data["fleet"], path)


def of_config(config: Config) -> FleetSettings | None:
    """The settings of a host's config with a `[fleet]` table, else None."""
    if config.fleet is None:
        return None
    return parse(config.fleet, config.path)
