"""cffi builder (API mode) for pyvpn's native data plane, `tunnel._native`.

Used by setup.py (``cffi_modules=["native/build.py:ffibuilder"]``) so that
``pip install -e .`` compiles it, and by the memory-safety test, which calls
``make_ffibuilder(asan=True).compile(tmpdir=...)`` for an AddressSanitizer
build.  PYVPN_ASAN=1 in the environment selects that build here too.
"""

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = [
    "device.c",
    "send.c",
    "receive.c",
    "peer.c",
    "allowedips.c",
    "mactable.c",
    "replay.c",
    "crypto.c",
    "offload.c",
    "upcall.c",
]

# cffi reads the API from dp.h itself, so it is declared in one place: the
# header minus its preprocessor lines, which cffi's parser does not take, after
# the system types it uses ("..." lets the C compiler fill in what cffi cannot
# see, such as the layout of sockaddr_storage).
SYSTEM_TYPES = """
typedef int... socklen_t;
struct sockaddr { ...; };
struct sockaddr_storage { ...; };
"""


def cdef() -> str:
    header = (HERE / "dp.h").read_text().splitlines()
    return SYSTEM_TYPES + "\n".join(line for line in header if not line.startswith("#"))


def make_ffibuilder(asan: bool | None = None) -> FFI:
    """Return an FFI builder; ``asan`` adds AddressSanitizer instrumentation."""
    if asan is None:
        asan = os.environ.get("PYVPN_ASAN") == "1"
    cflags = [
        "-O2",
        "-g",
        "-std=gnu11",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
        "-fno-strict-aliasing",
        "-pthread",
        "-D_GNU_SOURCE",
    ]
    ldflags = ["-pthread"]
    if asan:
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    # Relative paths when building from the repo root (setuptools wants them),
    # absolute ones otherwise (the ASAN test compiles from a temp dir).
    base = HERE
    if Path.cwd().resolve() == HERE.parent:
        base = Path("native")
    ffi = FFI()
    ffi.cdef(cdef())
    ffi.set_source(
        "tunnel._native",
        '#include "dp.h"\n',
        sources=[str(base / s) for s in SOURCES],
        include_dirs=[str(base)],
        libraries=["crypto"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return ffi


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
