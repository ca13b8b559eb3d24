"""pyvpn installed as an operator installs it: the runtime apart from the lab,
a wheel in a fresh venv, a Debian package in a fresh Debian root."""

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunnel.lab import testbed
from tunnel.lab.testbed import (
    INNER_B,
    WIREGUARD_GO_ENV,
    Daemon,
    Namespace,
    pyvpn_status,
    start_daemon,
    uapi_listening,
    wait_for,
    wait_reachable,
    wireguard_go,
    write_pair_configs,
)

from .conftest import NATIVE_MISSING, ROOT, needs

# Heavy but not timing-sensitive (pip, dpkg-buildpackage, mmdebstrap): on a
# worker of its own in the parallel phase, so its builds are made once, beside
# the tests that wait on timers.
pytestmark = pytest.mark.xdist_group("install")

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# The Python an operator's Debian has (python3-venv, which scripts/setup installs).
SYSTEM_PYTHON = "/usr/bin/python3"
# What a copy of the source tree leaves behind: builds, caches, the venv.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o",
    ".pytest_cache", ".ruff_cache", ".hypothesis", "bench-out", "constants.h",
)  # fmt: skip


def fake_binary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_bench_takes_the_wireguard_go_it_is_given(tmp_path, monkeypatch):
    given = fake_binary(tmp_path / "wg-go")
    monkeypatch.setenv(WIREGUARD_GO_ENV, str(given))
    assert wireguard_go() == given


def test_the_bench_finds_wireguard_go_on_path_outside_a_checkout(tmp_path, monkeypatch):
    """No venv with scripts/setup's contenders/: wireguard-go from PATH."""
    on_path = fake_binary(tmp_path / "bin" / "wireguard-go")
    monkeypatch.delenv(WIREGUARD_GO_ENV, raising=False)
    monkeypatch.setattr(testbed, "_VENV_WIREGUARD_GO", tmp_path / "venv" / "absent")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert wireguard_go() == on_path


def test_a_missing_wireguard_go_says_where_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv(WIREGUARD_GO_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(
        FileNotFoundError, match=f"run scripts/setup, or name one in \\${WIREGUARD_GO_ENV}"
    ):
        wireguard_go()


def run(*argv: str | Path, **kw) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{argv}: {result.stderr or result.stdout}"
    return result


def source_copy(tmp: Path) -> Path:
    """The source tree as a fresh clone has it, nothing built."""
    shutil.copytree(ROOT, tmp / "src", ignore=NOT_SOURCE)
    return tmp / "src"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """`python -m build`: the sdist, and the wheel built from it."""
    tmp = tmp_path_factory.mktemp("build")
    run(sys.executable, "-m", "build", "--outdir", tmp / "dist", source_copy(tmp))
    return tmp / "dist"


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory) -> Path:
    """A fresh venv of the system's Python, without its site packages, holding the
    wheel and its dependencies from the package index: pyvpn as pip installs it."""
    path = tmp_path_factory.mktemp("venv")
    run(SYSTEM_PYTHON, "-m", "venv", path)
    (wheel,) = built.glob("pyvpn-*.whl")
    run(path / "bin/pip", "install", "-q", wheel)
    return path


def test_python_m_build_makes_an_sdist_and_a_wheel_with_the_native_plane(built):
    (sdist,) = built.glob("*.tar.gz")
    (wheel,) = built.glob("*.whl")
    assert sdist.name == f"pyvpn-{VERSION}.tar.gz"
    assert wheel.name.startswith(f"pyvpn-{VERSION}-cp311-")
    assert "tunnel/planes/_native." in run("unzip", "-l", wheel).stdout


def test_the_wheel_installs_the_runtime_alone(venv):
    """`pip install pyvpn`: the tunnel's packages, not the lab's."""
    assert run(venv / "bin/pyvpn", "--version").stdout == f"pyvpn {VERSION}\n"
    assert run(venv / "bin/pyvpn-wg", "--version").stdout.startswith(f"pyvpn-wg (pyvpn) {VERSION}")
    installed = run(venv / "bin/pip", "list", "--format=freeze").stdout.lower()
    names = {line.split("==")[0].replace("_", "-") for line in installed.split()}
    runtime = {"cryptography", "pynacl", "pyroute2", "uvloop", "cffi", "prometheus-client",
               "aioice", "etcd3gw"}  # fmt: skip
    assert runtime <= names
    assert not names & {"rich", "matplotlib", "pytest"}
    demo = subprocess.run([venv / "bin/pyvpn", "demo"], capture_output=True, text=True)
    assert demo.returncode == 2
    assert demo.stderr == "pyvpn: demo needs rich, matplotlib: pip install 'pyvpn[bench]'\n"


def start_up(ns: Namespace, pyvpn: list[str], config: Path, by_name: bool) -> Daemon:
    """`pyvpn up CONFIG` (or `up NAME`, for /etc/pyvpn/NAME.toml) in `ns` as `pyvpn`
    (an installed one) runs it, without this checkout on PYTHONPATH; returns
    once its UAPI socket answers."""
    name = config.stem  # write_pair_configs names the file after the device
    argv = [*pyvpn, "up", name if by_name else str(config)]
    daemon = start_daemon(ns, argv, name, {"PYTHONPATH": ""})
    wait_for(daemon, lambda: uapi_listening(name), "its UAPI socket appeared", 20)
    return daemon


@contextlib.contextmanager
def installed_pair(bed, directory: Path, pyvpn: list[str], by_name: bool = False) -> Iterator[str]:
    """A tun tunnel on the native plane between bed.a and bed.b, both ends run
    by an installed pyvpn; yields A's device name once B answers a ping."""
    path_a, path_b = write_pair_configs(directory, "tun", "native")
    with start_up(bed.a, pyvpn, path_a, by_name), start_up(bed.b, pyvpn, path_b, by_name):
        wait_reachable(bed.a, INNER_B)
        yield path_a.stem


@needs(NATIVE_MISSING)
def test_the_wheel_runs_a_tunnel_on_the_native_plane(venv, bed, tmp_path):
    where = run(venv / "bin/python", "-c", "import tunnel; print(tunnel.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(venv))
    with installed_pair(bed, tmp_path, [str(venv / "bin/pyvpn")]) as name:
        assert pyvpn_status(name)["datapath"] == "native"


def test_the_sdist_says_what_is_missing_to_build_the_native_plane(built, venv, tmp_path):
    """`pip install pyvpn-VERSION.tar.gz` on a host without a compiler: one line
    that names it, not a compiler's pages."""
    (sdist,) = built.glob("*.tar.gz")
    result = subprocess.run(
        [venv / "bin/pip", "wheel", "--no-deps", "-w", tmp_path, sdist],
        capture_output=True,
        text=True,
        env={**os.environ, "CC": "/nonexistent/cc"},
    )
    assert result.returncode != 0 and list(tmp_path.glob("*.whl")) == []
    said = "error: pyvpn's native data plane cannot be built: "
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines()]
    assert f"{said}no C compiler '/nonexistent/cc' ($CC): apt-get install gcc, or set CC" in lines
    assert not [line for line in lines if "gcc" in line and said not in line]


# What the test runs in the Debian root besides pyvpn's own Depends: man(1)
# and systemd-analyze(1).
ROOT_TOOLS = ["man-db", "systemd"]


@pytest.fixture(scope="module")
def deb() -> Path:
    """scripts/build-deb's package (lintian clean of errors, or it fails)."""
    built = run(ROOT / "scripts/build-deb", cwd=ROOT, timeout=900).stdout.strip()
    return ROOT / built


def debian_root_tarball(packages: list[str]) -> Path:
    """A minimal bookworm root holding `packages`, from the machine's own Debian
    mirror, made once per package list: build/debian-root-KEY.tar."""
    key = hashlib.sha256(" ".join(sorted(packages)).encode()).hexdigest()[:16]
    tarball = ROOT / "build" / f"debian-root-{key}.tar"
    if not tarball.exists():
        mirror = run(ROOT / "scripts/apt-mirror").stdout.strip()
        partial = tarball.with_suffix(".partial.tar")
        run("mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(packages)}",
            "bookworm", partial, mirror, timeout=1800)  # fmt: skip
        partial.rename(tarball)
    return tarball


@pytest.fixture
def debian_root(deb, tmp_path) -> Iterator[Path]:
    """A fresh Debian root with the package installed by dpkg, and the host's
    /proc, /sys, /dev and /run in it (the tunnel's UAPI sockets are seen from
    outside); unmounted after."""
    depends = run("dpkg-deb", "-f", deb, "Depends").stdout
    packages = [d.split()[0] for d in depends.split(",")] + ROOT_TOOLS
    root = tmp_path / "root"
    root.mkdir()
    run("tar", "-xf", debian_root_tarball(packages), "-C", root)
    shutil.copy(deb, root / "tmp" / deb.name)
    mounted = []
    try:
        for place in ("proc", "sys", "dev", "run"):
            run("mount", "--bind", f"/{place}", root / place)
            mounted.append(root / place)
        run("chroot", root, "dpkg", "-i", f"/tmp/{deb.name}")
        yield root
    finally:
        for place in reversed(mounted):
            subprocess.run(["umount", "--lazy", place], check=False)


def in_root(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return run("chroot", root, *argv)


# Beside the wheel's tests rather than after them: the package and its Debian
# root, made from scratch on a fresh clone, are the parallel phase's longest wait.
@pytest.mark.xdist_group("debian")
@needs(NATIVE_MISSING)
def test_the_debian_package_installs_runs_and_removes(deb, debian_root, bed):
    root = debian_root
    assert deb.name == f"pyvpn_{VERSION}_amd64.deb"
    assert in_root(root, "pyvpn", "--version").stdout == f"pyvpn {VERSION}\n"
    assert stat.S_IMODE((root / "etc/pyvpn").stat().st_mode) == 0o700
    # A tunnel between two namespaces, both ends the package's /usr/bin/pyvpn.
    pyvpn = ["chroot", str(root), "/usr/bin/pyvpn"]
    with installed_pair(bed, root / "etc/pyvpn", pyvpn, by_name=True) as name:
        assert pyvpn_status(name)["datapath"] == "native"
    # Its manual, and its units as systemd reads them.
    page = in_root(root, "man", "-P", "cat", "pyvpn").stdout
    assert "pyvpn up" in page
    shutil.copy(root / "lib/systemd/system/pyvpn@.service", root / "tmp/pyvpn@tun-a.service")
    for unit in ("/tmp/pyvpn@tun-a.service", "/lib/systemd/system/pyvpn-metrics.service"):
        checked = in_root(root, "systemd-analyze", "verify", "--man=no", unit)
        assert checked.stderr == ""
    completion = root / "usr/share/bash-completion/completions/pyvpn"
    example = root / "usr/share/doc/pyvpn/examples/wg-quick@.service.d/pyvpn.conf"
    assert completion.is_file() and example.is_file()
    # dpkg -r takes all of it but /etc/pyvpn and the configs in it.
    files = [p.split()[-1].lstrip(".") for p in run("dpkg-deb", "-c", deb).stdout.splitlines()]
    in_root(root, "dpkg", "-r", "pyvpn")
    left = [
        f
        for f in files
        if os.path.lexists(root / f.lstrip("/")) and not (root / f.lstrip("/")).is_dir()
    ]
    assert left == []
    assert not (root / "usr/lib/pyvpn").exists()
    assert (root / "etc/pyvpn").is_dir() and list((root / "etc/pyvpn").glob("*.toml"))
