"""The fleet's signed records and what a host makes of the registry's values:
only the fleet key's signature admits, any changed byte is refused, arbitrary
bytes are a refusal and never an exception, and a revocation keeps an old
admission out when it is written back."""

import base64
import ipaddress
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from tunnel.fleet.record import Admission, RecordError, Revocation, sign, verify
from tunnel.fleet.roster import Candidate, Layout, Roster, encode_candidates
from tunnel.protocol import keys

FLEET = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
LAYOUT = Layout("/pyvpn/test")
KEY_A = keys.public_key(keys.generate_private_key())
KEY_B = keys.public_key(keys.generate_private_key())


def admission(name: str = "a", key: bytes = KEY_A, serial: int = 1, **kw) -> Admission:
    fields = {
        "address": ipaddress.ip_interface("10.7.0.1/24"),
        "subnets": (ipaddress.ip_network("192.168.5.0/24"),),
        "mode": "tun",
        **kw,
    }
    return Admission(name, key, serial=serial, **fields)


SIGNED = sign(admission(), FLEET)


def test_a_signed_admission_reads_back_whole():
    found = verify(SIGNED, FLEET.public_key())
    assert found == admission()
    assert [str(n) for n in found.networks()] == ["10.7.0.1/32", "192.168.5.0/24"]


def test_a_record_signed_by_another_key_is_refused():
    with pytest.raises(RecordError, match="signature"):
        verify(sign(admission(), OTHER), FLEET.public_key())


def test_a_revocation_is_never_read_as_an_admission():
    value = sign(Revocation("a", KEY_A, 5), FLEET)
    assert verify(value, FLEET.public_key()) == Revocation("a", KEY_A, 5)


@given(st.data())
def test_any_changed_byte_is_refused(data):
    position = data.draw(st.integers(0, len(SIGNED) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != SIGNED[position]))
    tampered = SIGNED[:position] + bytes([new]) + SIGNED[position + 1 :]
    try:
        found = verify(tampered, FLEET.public_key())
    except RecordError:
        return
    # A change the envelope's JSON does not see (a space, an escape) leaves the
    # signed bytes as they were: the same record, never another.
    assert found == admission()


@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_a_refusal_not_an_exception(value):
    with pytest.raises(RecordError):
        verify(value, FLEET.public_key())


# Each field right, or of another type or value.
field_values = st.sampled_from(
    [None, True, 0, -1, 1, 2**70, 1.5, "", "a", "admission", "revocation", "tun", "tap",
     "10.7.0.1/24", "10.7.0.300/24", keys.encode(KEY_A), [], ["10.0.0.0/8"], [1], {}]
)  # fmt: skip
FIELDS = ["kind", "name", "public_key", "serial", "address", "subnets", "mode", "expires", "x"]


@given(st.dictionaries(st.sampled_from(FIELDS), field_values))
def test_any_signed_body_either_parses_or_is_refused(fields):
    """Even the fleet key's own mistakes: a signed body that is not a record."""
    data = json.dumps(fields).encode()
    envelope = {"body": data, "signature": FLEET.sign(data)}
    value = json.dumps({k: base64.b64encode(v).decode() for k, v in envelope.items()}).encode()
    try:
        found = verify(value, FLEET.public_key())
    except RecordError:
        return
    assert found.name == fields["name"]


def roster_of(*values: tuple[str, bytes]) -> Roster:
    roster = Roster(FLEET.public_key(), LAYOUT)
    for key, value in values:
        roster.put(key, value, now=1000.0)
    return roster


def test_the_roster_counts_only_what_the_fleet_key_signed():
    roster = roster_of(
        (LAYOUT.host("a"), SIGNED),
        (LAYOUT.host("b"), sign(admission("b", KEY_B), OTHER)),
        (LAYOUT.host("c"), b"not a record"),
        (LAYOUT.host("d"), SIGNED),  # a's record under d's key
    )
    assert [m.admission.name for m in roster.members(1000.0).values()] == ["a"]
    assert roster.refused == {"forged": 1, "unsigned": 1, "misplaced": 1}


def test_a_refusal_is_reported_once_and_counted_each_time():
    roster = roster_of()
    reports = [roster.put(LAYOUT.host("b"), b"junk", 0.0) for _ in range(3)]
    assert reports[0] is not None and "refused (unsigned)" in reports[0]
    assert reports[1:] == [None, None]
    assert roster.refused["unsigned"] == 3


def test_an_old_admission_written_back_stays_revoked():
    roster = roster_of((LAYOUT.host("a"), SIGNED))
    roster.put(LAYOUT.revocation("a", 2), sign(Revocation("a", KEY_A, 2), FLEET), 1000.0)
    roster.delete(LAYOUT.host("a"))
    assert roster.members(1000.0) == {}
    # The old record written back, and the revocation deleted from etcd.
    assert roster.put(LAYOUT.host("a"), SIGNED, 1000.0) is not None
    roster.delete(LAYOUT.revocation("a", 2))
    assert roster.members(1000.0) == {}
    assert roster.refused["revoked"] == 1
    # Admitted again, with a serial above the revocation's: back.
    roster.put(LAYOUT.host("a"), sign(admission(key=KEY_B, serial=3), FLEET), 1000.0)
    assert list(roster.members(1000.0)) == [KEY_B]


def test_a_revocation_also_covers_the_key_under_another_name():
    roster = roster_of(
        (LAYOUT.revocation("a", 2), sign(Revocation("a", KEY_A, 2), FLEET)),
        (LAYOUT.host("z"), sign(admission("z", KEY_A, serial=1), FLEET)),
    )
    assert roster.members(1000.0) == {}


def test_an_expired_admission_does_not_count():
    roster = roster_of((LAYOUT.host("a"), sign(admission(expires=1500), FLEET)))
    assert list(roster.members(1000.0)) == [KEY_A]
    assert roster.members(1500.0) == {}


def test_endpoint_hints_join_their_host_and_bad_ones_are_refused():
    hints = [Candidate("local", "198.18.0.1:51820"), Candidate("mapped", "[2001:db8::1]:4000")]
    roster = roster_of(
        (LAYOUT.host("a"), SIGNED),
        (LAYOUT.endpoints("a"), encode_candidates(hints)),
        (LAYOUT.endpoints("b"), b'[{"kind": "local", "endpoint": "example.net:1"}]'),
    )
    assert roster.members(1000.0)[KEY_A].candidates == tuple(hints)
    assert roster.refused == {"bad hint": 1}
    roster.delete(LAYOUT.endpoints("a"))
    assert roster.members(1000.0)[KEY_A].candidates == ()


def test_keys_outside_the_fleets_layout_are_not_its_business():
    roster = roster_of(("/pyvpn/test/other/thing", b"x"), ("/elsewhere", SIGNED))
    assert roster.members(1000.0) == {} and not roster.refused
