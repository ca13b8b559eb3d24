"""The signed records of a fleet: a host's admission and its revocation.

etcd holds them, but etcd is trusted for availability only: a record counts
when the fleet key (Ed25519) signed it. The signature covers the exact bytes
of the record's body (JSON with sorted keys, no spaces), which travel beside
it in an envelope, so no second encoding has to agree with the first:

    {"body": "<base64 of the body's bytes>", "signature": "<base64>"}

The body names its kind, so a revocation is never read as an admission. Every
record carries a serial, fleet-wide and rising (commands.py takes the next one
from the registry): a revocation outranks each admission of the same host
name or the same public key whose serial is not above its own, so an old
admission written back into etcd stays revoked."""

import base64
import binascii
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tunnel.host.routing import InterfaceAddress
from tunnel.protocol import keys
from tunnel.protocol.allowed_ips import Network

# A host's name: a DNS label, which also fits in an etcd key and a file name.
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
NAME_RULE = "lower-case letters, digits and '-', at most 63, not starting or ending with '-'"
MODES = ("tun", "tap")
# Far above any real record; a body past it is refused before it is parsed.
MAX_RECORD = 16384


class RecordError(ValueError):
    """A registry value that is not a record the fleet key signed: why, in a few words."""


@dataclass(frozen=True)
class Admission:
    """A host in the fleet: who it is (its WireGuard public key), its tunnel
    address, the subnets behind it, its mode, and until when (Unix time; None:
    until revoked)."""

    name: str
    public_key: bytes
    address: InterfaceAddress
    subnets: tuple[Network, ...]
    mode: str
    serial: int
    expires: int | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def networks(self) -> list[Network]:
        """What the host's peers route to it: its own address, then its subnets."""
        return [ipaddress.ip_network(self.address.ip), *self.subnets]


@dataclass(frozen=True)
class Revocation:
    """A host put out of the fleet, by name and public key, as of its serial."""

    name: str
    public_key: bytes
    serial: int

    def outranks(self, admission: Admission) -> bool:
        same = admission.name == self.name or admission.public_key == self.public_key
        return same and admission.serial <= self.serial


Record = Admission | Revocation


def body(record: Record) -> bytes:
    """The exact bytes the fleet key signs."""
    fields: dict[str, Any] = {
        "name": record.name,
        "public_key": keys.encode(record.public_key),
        "serial": record.serial,
    }
    if isinstance(record, Admission):
        fields |= {
            "kind": "admission",
            "address": str(record.address),
            "subnets": [str(n) for n in record.subnets],
            "mode": record.mode,
            "expires": record.expires,
        }
    else:
        fields["kind"] = "revocation"
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign(record: Record, fleet_key: Ed25519PrivateKey) -> bytes:
    """The record as the registry stores it: its body and the fleet key's signature."""
    data = body(record)
    envelope = {
        "body": base64.b64encode(data).decode(),
        "signature": base64.b64encode(fleet_key.sign(data)).decode(),
    }
    return json.dumps(envelope, sort_keys=True).encode()


def verify(value: bytes, fleet_public: Ed25519PublicKey) -> Record:
    """The record in a registry value, if the fleet key signed it; RecordError
    (never another exception, whatever the bytes) says why not."""
    if len(value) > MAX_RECORD:
        raise RecordError(f"{len(value)} bytes, more than a record's {MAX_RECORD}")
    try:
        envelope = json.loads(value)
    except (ValueError, RecursionError):
        raise RecordError("not a signed record (no JSON envelope)") from None
    if not isinstance(envelope, dict) or set(envelope) != {"body", "signature"}:
        raise RecordError("not a signed record (the envelope is not body and signature)")
    data, signature = _base64(envelope["body"], "body"), _base64(envelope["signature"], "signature")
    try:
        fleet_public.verify(signature, data)
    except InvalidSignature:
        raise RecordError("the signature is not the fleet key's") from None
    # Signed by the fleet key: a malformed body here is the fleet's own mistake,
    # still refused as a whole.
    return parse_body(data)


def _base64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise RecordError(f"the {what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError(f"the {what} is not base64") from None


def parse_body(data: bytes) -> Record:
    try:
        fields = json.loads(data)
    except (ValueError, RecursionError):
        raise RecordError("the body is not JSON") from None
    if not isinstance(fields, dict):
        raise RecordError("the body is not a JSON object")
    kind = fields.get("kind")
    wanted = {"kind", "name", "public_key", "serial"}
    if kind == "admission":
        wanted |= {"address", "subnets", "mode", "expires"}
    elif kind != "revocation":
        raise RecordError(f"unknown kind {str(kind)[:20]!r}")
    if set(fields) != wanted:
        raise RecordError(f"a {kind} has the fields {', '.join(sorted(wanted))}")
    name, serial = fields["name"], fields["serial"]
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RecordError(f"name {str(name)[:70]!r} is not a host name")
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise RecordError("serial is not a whole number from 1")
    try:
        public_key = keys.decode(_text(fields["public_key"], "public_key"))
    except keys.InvalidKey:
        raise RecordError("public_key is not a WireGuard key") from None
    if kind == "revocation":
        return Revocation(name, public_key, serial)
    mode, expires = fields["mode"], fields["expires"]
    if mode not in MODES:
        raise RecordError(f"mode {str(mode)[:10]!r} is neither tun nor tap")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)):
        raise RecordError("expires is not a Unix time")
    subnets = fields["subnets"]
    if not isinstance(subnets, list):
        raise RecordError("subnets is not a list")
    try:
        address = ipaddress.ip_interface(_text(fields["address"], "address"))
        networks = tuple(ipaddress.ip_network(_text(s, "subnets"), strict=False) for s in subnets)
    except ValueError as e:
        raise RecordError(f"not an address: {str(e)[:80]}") from None
    return Admission(name, public_key, address, networks, mode, serial, expires)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} is not text")
    return value


def encode_fleet_key(key: Ed25519PrivateKey) -> str:
    """The fleet's signing key as fleet.key holds it: base64 of its 32 raw bytes."""
    return base64.b64encode(key.private_bytes_raw()).decode()


def encode_fleet_public(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes_raw()).decode()


def decode_fleet_key(text: str) -> Ed25519PrivateKey:
    """ValueError (keys.InvalidKey) for anything but 32 bytes of base64."""
    return Ed25519PrivateKey.from_private_bytes(keys.decode(text))


def decode_fleet_public(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(keys.decode(text))
