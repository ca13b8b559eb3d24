"""Every fact the C data plane shares with Python has one source,
tunnel/protocol/constants.py: C compiled with exactly its values, no C file
defines one of them again, and the few that dp.h defines are Python's too."""

import re
import sys

from tunnel.planes import dp
from tunnel.protocol import constants

from ..conftest import NATIVE_MISSING, ROOT, needs

NATIVE = ROOT / "native"
sys.path.insert(0, str(NATIVE))
import build  # noqa: E402  (native/build.py, by path)

needs_native = needs(NATIVE_MISSING)


def test_every_shared_name_is_a_python_constant() -> None:
    for name in (*constants.SHARED_WITH_C, *constants.SHARED_WITH_C_NS):
        assert isinstance(getattr(constants, name), int | float), name


def test_the_header_is_generated_from_the_python_constants() -> None:
    assert (NATIVE / "constants.h").read_text() == build.constants_header()
    assert build.shared_constants()["REJECT_AFTER_TIME_NS"] == 180 * 10**9
    assert build.shared_constants()["COUNTER_WINDOW_SIZE"] == 8192 - 64


def test_no_c_file_defines_a_shared_constant_again() -> None:
    shared = set(build.shared_constants())
    for path in sorted(NATIVE.glob("*.[ch]")):
        if path.name == "constants.h":
            continue
        defined = set(re.findall(r"^\s*#\s*define\s+(\w+)", path.read_text(), re.M))
        assert not defined & shared, f"{path.name} defines {sorted(defined & shared)}"


@needs_native
def test_c_was_compiled_with_the_python_values() -> None:
    for name, value in build.shared_constants().items():
        assert getattr(dp.lib, name) == value, name


@needs_native
def test_what_dp_h_defines_python_uses_as_is() -> None:
    lib, ffi = dp.lib, dp.ffi
    assert (dp.SLOT_CURRENT, dp.SLOT_PREVIOUS, dp.SLOT_NEXT) == (
        lib.DP_CURRENT,
        lib.DP_PREVIOUS,
        lib.DP_NEXT,
    )
    assert dp.VNET_HDR_LEN == lib.DP_VNET_HDR_LEN
    assert dp.UPCALL_HEADER.size == ffi.sizeof("struct dp_upcall_hdr")
    for kind in dp.UpcallKind:
        assert getattr(lib, f"DP_UPCALL_{kind.name}") == kind.value, kind


@needs_native
def test_python_reads_a_consumed_initiation_as_dp_h_lays_it_out() -> None:
    fields = dict(dp.ffi.typeof("struct dp_consumed_initiation").fields)
    sizes = {
        "remote_static": constants.KEY_SIZE,
        "timestamp": constants.TIMESTAMP_SIZE,
        "hash": constants.HASH_SIZE,
        "chaining_key": constants.HASH_SIZE,
        "response_ephemeral": constants.KEY_SIZE,
        "response_hash": constants.HASH_SIZE,
        "response_chaining_key": constants.HASH_SIZE,
    }
    offset = fields["remote_static"].offset
    assert (fields["status"].offset, fields["admitted"].offset, offset) == (0, 1, 4)
    for name, size in sizes.items():  # in CONSUMED_INITIATION's order
        assert (fields[name].offset, fields[name].type.length) == (offset, size), name
        offset += size
    assert dp.CONSUMED_INITIATION.size == offset == dp.ffi.sizeof("struct dp_consumed_initiation")
    assert dp.INITIATION_CONSUMED == dp.lib.DP_INITIATION_CONSUMED
