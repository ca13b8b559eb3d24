"""scripts/apt-mirror: the Debian archive that scripts/setup fetches the newer
suites' contenders from is the one the machine's own apt sources use, read from a root
directory laid out here."""

import subprocess
import sys
import textwrap
from pathlib import Path

from .conftest import ROOT

OWN = "http://apt-cache.example:3142/deb.debian.org/debian"


def apt_mirror(root: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Lay out `files` (paths under root: text) and run the script on root."""
    for name, text in {"etc/os-release": "VERSION_CODENAME=bookworm\n", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/apt-mirror"), str(root)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_one_line_sources_list_gives_its_debian_archive(tmp_path):
    done = apt_mirror(
        tmp_path,
        {
            "etc/apt/sources.list": f"""\
                # deb http://old-mirror.example/debian bookworm main
                deb cdrom:[Debian GNU/Linux 12.0.0 _Bookworm_ - Official amd64 DVD]/ bookworm main
                deb http://security.debian.org/debian-security bookworm-security main
                deb-src http://src-mirror.example/debian bookworm main
                deb https://download.docker.com/linux/debian bookworm stable
                deb [ arch=amd64 signed-by=/usr/share/keyrings/d.gpg ] {OWN}/ bookworm main
                deb http://later-mirror.example/debian bookworm-updates main
            """,
        },
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{OWN}\n", "")


def test_the_deb822_sources_give_their_debian_archive(tmp_path):
    done = apt_mirror(
        tmp_path,
        {
            # A third party's, read first, with main but a suite of its own.
            "etc/apt/sources.list.d/a-nodesource.sources": """\
                Types: deb
                URIs: https://deb.nodesource.com/node_20.x
                Suites: nodistro
                Components: main
            """,
            "etc/apt/sources.list.d/debian.sources": f"""\
                Types: deb
                URIs: http://deb.debian.org/debian-security
                Suites: bookworm-security
                Components: main

                Types: deb
                URIs: http://switched-off.example/debian
                Suites: bookworm
                Components: main
                Enabled: no

                Types: deb deb-src
                # URIs: http://commented-out.example/debian
                URIs: {OWN}
                Suites: bookworm bookworm-updates
                Components: main
                Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
            """,
        },
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{OWN}\n", "")


def test_a_suite_named_stable_is_the_machines_release_too(tmp_path):
    done = apt_mirror(tmp_path, {"etc/apt/sources.list": f"deb {OWN} stable main\n"})
    assert (done.returncode, done.stdout) == (0, f"{OWN}\n")


def test_no_debian_archive_is_one_line_and_exit_1(tmp_path):
    done = apt_mirror(
        tmp_path,
        {
            "etc/apt/sources.list": """\
                #deb http://deb.debian.org/debian bookworm main
                deb http://deb.debian.org/debian-security bookworm-security main
            """,
        },
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"apt-mirror: no Debian archive in {tmp_path}/etc/apt's sources\n"
