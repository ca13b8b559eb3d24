"""What the registry says about the fleet, as far as the fleet key vouches for
it: sans-IO, fed the registry's keys and values as they come (a snapshot, then
watch events) and asked who the members are.

The keys under the fleet's prefix (Layout):
    PREFIX/hosts/NAME              NAME's signed admission
    PREFIX/revoked/NAME/SERIAL     a signed revocation of NAME
    PREFIX/endpoints/NAME          NAME's endpoint candidates: unsigned hints,
                                   under NAME's etcd lease

A value the fleet key did not sign, one stored under another name's key, an
admission a revocation outranks, and one past its expiry are refused and
counted by reason; each (key, value) is reported once, for the caller to log.
A revocation, once seen, is never forgotten: deleting it from etcd does not
bring its host back to a running host. Endpoint hints are taken as they are
(WireGuard authenticates every packet, so a wrong one costs reachability only),
but only hints that parse, and only for admitted hosts."""

import hashlib
import ipaddress
import json
from collections import Counter
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tunnel.host.udp import split_address

from .record import NAME, Admission, RecordError, Revocation, verify

# How a host may be reached, best first: an address of its own, its public
# mapping learnt by STUN, a TURN relay.
KINDS = ("local", "mapped", "relayed")
MAX_CANDIDATES = 32


@dataclass(frozen=True)
class Candidate:
    """One address:port at which a host's WireGuard socket may be reached."""

    kind: str
    endpoint: str  # "198.51.100.7:51820", "[2001:db8::7]:51820"

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "endpoint": self.endpoint}


def encode_candidates(candidates: list[Candidate]) -> bytes:
    return json.dumps([c.as_json() for c in candidates], sort_keys=True).encode()


def decode_candidates(value: bytes) -> list[Candidate]:
    """A host's published hints; ValueError for a value that is not a list of them."""
    found = json.loads(value)
    if not isinstance(found, list) or len(found) > MAX_CANDIDATES:
        raise ValueError("not a list of candidates")
    candidates = []
    for item in found:
        if not isinstance(item, dict) or item.get("kind") not in KINDS:
            raise ValueError("a candidate of no known kind")
        endpoint = item.get("endpoint")
        if not isinstance(endpoint, str):
            raise ValueError("a candidate without an endpoint")
        host, _ = split_address(endpoint)
        ipaddress.ip_address(host)  # an address, never a name to resolve
        candidates.append(Candidate(item["kind"], endpoint))
    return candidates


@dataclass(frozen=True)
class Layout:
    """Where the fleet's keys live under its prefix."""

    prefix: str

    def host(self, name: str) -> str:
        return f"{self.prefix}/hosts/{name}"

    def revocation(self, name: str, serial: int) -> str:
        return f"{self.prefix}/revoked/{name}/{serial}"

    def endpoints(self, name: str) -> str:
        return f"{self.prefix}/endpoints/{name}"

    def all(self) -> str:
        """The prefix every key of the fleet starts with."""
        return f"{self.prefix}/"

    def parse(self, key: str) -> tuple[str, str] | None:
        """(section, name) of a key of the fleet; None for any other key."""
        if not key.startswith(self.all()):
            return None
        parts = key[len(self.all()) :].split("/")
        if len(parts) == 2 and parts[0] in ("hosts", "endpoints") and NAME.fullmatch(parts[1]):
            return parts[0], parts[1]
        if len(parts) == 3 and parts[0] == "revoked" and NAME.fullmatch(parts[1]):
            return "revoked", parts[1]
        return None


@dataclass(frozen=True)
class Member:
    admission: Admission
    candidates: tuple[Candidate, ...]  # empty: offline (no live lease)


@dataclass
class Roster:
    verifier: Ed25519PublicKey
    layout: Layout
    admissions: dict[str, Admission] = field(default_factory=dict)  # by name
    revocations: dict[tuple[str, int], Revocation] = field(default_factory=dict)
    hints: dict[str, tuple[Candidate, ...]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    _reported: set[tuple[str, bytes]] = field(default_factory=set)

    def put(self, key: str, value: bytes, now: float) -> str | None:
        """Take a key's new value. Returns why it was refused the first time this
        (key, value) is refused, for the caller's log; None otherwise."""
        where = self.layout.parse(key)
        if where is None:
            return None  # another tool's key under the prefix: not the fleet's
        section, name = where
        if section == "endpoints":
            try:
                self.hints[name] = tuple(decode_candidates(value))
            except (ValueError, RecursionError):
                self.hints.pop(name, None)
                return self._refuse(key, value, "bad hint", "endpoint candidates that do not parse")
            return None
        if section == "hosts":
            self.admissions.pop(name, None)  # a value that does not count is none
        try:
            found = verify(value, self.verifier)
        except RecordError as e:
            reason = "forged" if "signature" in str(e) else "unsigned"
            return self._refuse(key, value, reason, str(e))
        if found.name != name:
            return self._refuse(key, value, "misplaced", f"holds {found.name}'s record")
        if section == "revoked":
            if not isinstance(found, Revocation):
                return self._refuse(key, value, "misplaced", "holds an admission")
            self.revocations[(found.name, found.serial)] = found
            return None
        if not isinstance(found, Admission):
            return self._refuse(key, value, "misplaced", "holds a revocation")
        self.admissions[name] = found
        revoked = self._revoked(found)
        if revoked is not None:
            return self._refuse(key, value, "revoked", f"revoked as of serial {revoked.serial}")
        if found.expired(now):
            return self._refuse(key, value, "expired", f"expired at {found.expires}")
        return None

    def delete(self, key: str) -> None:
        """A key gone from the registry. Revocations stay: see the module's doc."""
        where = self.layout.parse(key)
        if where is None:
            return
        section, name = where
        if section == "hosts":
            self.admissions.pop(name, None)
        elif section == "endpoints":
            self.hints.pop(name, None)

    def members(self, now: float) -> dict[bytes, Member]:
        """The hosts that count now, by WireGuard public key. Two admissions with
        one key (a host renamed without a revocation): the higher serial counts."""
        chosen: dict[bytes, Admission] = {}
        for admission in self.admissions.values():
            if self._revoked(admission) is not None or admission.expired(now):
                continue
            other = chosen.get(admission.public_key)
            if other is None or other.serial < admission.serial:
                chosen[admission.public_key] = admission
        return {key: Member(a, self.hints.get(a.name, ())) for key, a in chosen.items()}

    def latest_serial(self) -> int:
        """The highest serial of any record seen, refused or not: the next record
        takes one above it, so that it outranks all of them."""
        serials = [a.serial for a in self.admissions.values()]
        serials += [serial for _, serial in self.revocations]
        return max(serials, default=0)

    def _revoked(self, admission: Admission) -> Revocation | None:
        return next((r for r in self.revocations.values() if r.outranks(admission)), None)

    def _refuse(self, key: str, value: bytes, reason: str, why: str) -> str | None:
        self.refused[reason] += 1
        seen = (key, hashlib.sha256(value).digest())
        if seen in self._reported:
            return None
        self._reported.add(seen)
        return f"{key}: refused ({reason}): {why}"
