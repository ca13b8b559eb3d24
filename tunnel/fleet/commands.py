"""`pyvpn fleet init|admit|revoke|list`: the fleet's administrator at work on
DIR, which holds the fleet's signing key (fleet.key) and its settings
(fleet.toml), and on the registry those settings name."""

import contextlib
import ipaddress
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunnel.control.config import ConfigError, exposed_key_file
from tunnel.control.convert import to_toml
from tunnel.host.secret_file import write_secret
from tunnel.protocol import keys

from . import record, settings
from .record import Admission, Revocation
from .registry import Registry
from .roster import Layout, Roster
from .settings import FLEET_FILE, KEY_FILE, FleetSettings

DEFAULT_PORT = 51820


class FleetError(Exception):
    """What the administrator asked cannot be done: one line, exit status 1."""


@dataclass
class Fleet:
    """DIR as the administrator's commands read it."""

    directory: Path
    settings: FleetSettings
    key: Ed25519PrivateKey
    warnings: list[str]

    @property
    def layout(self) -> Layout:
        return Layout(self.settings.prefix)


def init(
    directory: str, registry: list[str], prefix: str | None, stun: str | None, relay: str | None
) -> list[str]:
    """A new fleet in DIR: its signing key and its settings. Refuses a DIR that
    already holds a fleet key: the key signs every admission, and a new one would
    orphan them all. Returns what to print."""
    where = Path(directory)
    name = where.resolve().name
    table: dict[str, Any] = {
        "registry": registry,
        "prefix": prefix or f"/pyvpn/{name}",
        "public_key": "",
    }
    if stun is not None:
        table["stun"] = stun
    if relay is not None:
        table["relay"] = relay
    key = Ed25519PrivateKey.generate()
    table["public_key"] = record.encode_fleet_public(key.public_key())
    # The settings are checked whole before anything is written.
    checked = settings.parse(table, str(where / FLEET_FILE))
    if (where / KEY_FILE).exists():
        raise FleetError(f"{where / KEY_FILE} exists: a fleet is already there")
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret(where / KEY_FILE, record.encode_fleet_key(key) + "\n")
    # 0600 too: a TURN relay's password may be in it.
    write_secret(where / FLEET_FILE, to_toml({"fleet": checked.table()}))
    return [
        f"fleet {checked.prefix}: signing key {where / KEY_FILE} (keep it secret), "
        f"settings {where / FLEET_FILE}",
        f"fleet public key: {table['public_key']}",
    ]


def open_fleet(directory: str) -> Fleet:
    found = settings.read_fleet_file(directory)
    path = Path(directory) / KEY_FILE
    try:
        text, mode = path.read_text(encoding="ascii"), path.stat().st_mode
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise ConfigError(str(path), "", f"cannot read: {why}") from None
    try:
        key = record.decode_fleet_key(text)
    except ValueError as e:
        raise ConfigError(str(path), "", f"not a fleet key: {e}") from None
    if key.public_key().public_bytes_raw() != found.public_key:
        raise ConfigError(
            str(path), "", f"is not the key of {Path(directory) / FLEET_FILE}'s public_key"
        )
    warnings = [w for w in [exposed_key_file(str(path), mode)] if w]
    return Fleet(Path(directory), found, key, warnings)


@contextlib.contextmanager
def connected(fleet: Fleet) -> Iterator[tuple[Registry, Roster]]:
    """The registry and what it holds now, read whole."""
    registry = Registry(fleet.settings)
    try:
        roster = Roster(fleet.key.public_key(), fleet.layout)
        _, values = registry.snapshot(fleet.layout.all())
        now = time.time()
        for key, value in values:
            roster.put(key, value, now)
        yield registry, roster
    finally:
        registry.close()


def admit(
    fleet: Fleet,
    name: str,
    address: str,
    subnets: list[str],
    mode: str,
    public_key: str | None,
    out: str | None,
    valid_days: float | None,
) -> list[str]:
    """Sign NAME's admission and store it; with `out`, write the host's config."""
    if not record.NAME.fullmatch(name):
        raise FleetError(f"{name[:70]!r} is not a host name: {record.NAME_RULE}")
    try:
        interface = ipaddress.ip_interface(address)
    except ValueError:
        raise FleetError(
            f"--address {address!r} is not an address with prefix, like 10.7.0.1/24"
        ) from None
    networks = []
    for subnet in subnets:
        try:
            networks.append(ipaddress.ip_network(subnet, strict=False))
        except ValueError:
            raise FleetError(f"--subnet {subnet!r} is not a network, like 192.168.1.0/24") from None
    if public_key is None:
        if out is None:
            raise FleetError("without --public-key, --out FILE is where the new private key goes")
        private = keys.generate_private_key()
        public = keys.public_key(private)
    else:
        private = None
        try:
            public = keys.decode(public_key)
        except keys.InvalidKey as e:
            raise FleetError(f"--public-key: not a key: {e}") from None
        if keys.low_order(public):
            raise FleetError("--public-key: a low-order point, with which no handshake succeeds")
    expires = None if valid_days is None else int(time.time() + valid_days * 86400)
    with connected(fleet) as (registry, roster):
        for member in roster.members(time.time()).values():
            other = member.admission
            if other.name != name and other.address.ip == interface.ip:
                raise FleetError(f"{interface.ip} is {other.name}'s address already")
            if other.name != name and other.public_key == public:
                raise FleetError(f"that public key is {other.name}'s already")
        serial = roster.latest_serial() + 1
        admission = Admission(name, public, interface, tuple(networks), mode, serial, expires)
        registry.put(fleet.layout.host(name), record.sign(admission, fleet.key))
    lines = [f"admitted {name}: {interface} ({mode}), public key {keys.encode(public)}"]
    if out is not None:
        write_host_config(fleet, out, mode, private)
        lines.append(f"wrote {out}: pyvpn up {out}")
    return lines


def write_host_config(fleet: Fleet, out: str, mode: str, private: bytes | None) -> None:
    """The host's whole config: its [interface] (its key, no address: that comes
    from its admission) and the fleet's [fleet] table. Mode 0600: the key."""
    interface: dict[str, Any] = {"name": "pyvpn0", "mode": mode, "listen_port": DEFAULT_PORT}
    if private is not None:
        interface["private_key"] = keys.encode(private)
    table = fleet.settings.table()
    for key in settings.FILES:
        if key in table:  # absolute: the host's file may live anywhere
            table[key] = os.path.abspath(table[key])
    write_secret(out, to_toml({"interface": interface, "fleet": table}))


def revoke(fleet: Fleet, name: str) -> list[str]:
    """Revoke NAME as of a serial above all its admissions, and drop its records."""
    with connected(fleet) as (registry, roster):
        admission = roster.admissions.get(name)
        if admission is None:
            raise FleetError(f"no host named {name} is admitted")
        revocation = Revocation(name, admission.public_key, roster.latest_serial() + 1)
        key = fleet.layout.revocation(name, revocation.serial)
        registry.put(key, record.sign(revocation, fleet.key))
        registry.delete(fleet.layout.host(name))
        registry.delete(fleet.layout.endpoints(name))
    return [f"revoked {name} (public key {keys.encode(admission.public_key)})"]


def listing(fleet: Fleet) -> list[str]:
    """Every admitted host: name, address, whether online (it has live endpoint
    candidates), and those candidates; then what the registry holds that does
    not count."""
    with connected(fleet) as (_, roster):
        members = sorted(roster.members(time.time()).values(), key=lambda m: m.admission.name)
        refused = dict(roster.refused)
    rows = [("HOST", "ADDRESS", "MODE", "ONLINE", "ENDPOINTS")]
    for m in members:
        a = m.admission
        endpoints = " ".join(f"{c.endpoint}({c.kind})" for c in m.candidates) or "-"
        rows.append((a.name, str(a.address), a.mode, "yes" if m.candidates else "no", endpoints))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if refused:
        lines.append(
            "refused: " + ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items()))
        )
    return lines
