"""Registers the cffi extension (native/build.py); everything else is in pyproject.toml."""

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import setup
from setuptools.command.build_ext import build_ext

# What the native plane compiles against: a program that needs each piece.
PROBE = """#include <Python.h>
#include <openssl/evp.h>
int main(void) { return EVP_chacha20() == NULL; }
"""


class BuildNative(build_ext):
    """build_ext that first says in one line what the host lacks (a C compiler,
    Python's or OpenSSL's headers, libcrypto) instead of a compiler's pages."""

    def run(self) -> None:
        problem = missing()
        if problem:
            sys.exit(f"error: pyvpn's native data plane cannot be built: {problem}")
        super().run()


def missing() -> str | None:
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)  # $CC, $CFLAGS, $LDFLAGS, as the real build takes them
    cc = compiler.compiler_so
    if shutil.which(cc[0]) is None:
        return f"no C compiler {cc[0]!r} ($CC): apt-get install gcc, or set CC"
    python_h = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as fh:
            fh.write(PROBE)
        probe = [*cc, f"-I{python_h}", source, "-o", os.path.join(tmp, "probe"), "-lcrypto"]
        result = subprocess.run(probe, capture_output=True, text=True)
    errors = result.stderr
    if "Python.h" in errors:
        return f"no Python.h in {python_h}: apt-get install python3-dev"
    if "openssl/" in errors:
        return "no OpenSSL headers (openssl/evp.h): apt-get install libssl-dev"
    if "-lcrypto" in errors:
        return "no libcrypto to link with: apt-get install libssl-dev"
    if result.returncode != 0:
        return f"{shlex.join(probe)} failed: {(errors.strip() or '?').splitlines()[-1]}"
    return None


setup(cffi_modules=["native/build.py:ffibuilder"], cmdclass={"build_ext": BuildNative})
