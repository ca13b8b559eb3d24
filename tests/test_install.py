"""pyvpn installed as an operator installs it: the runtime apart from the lab,
a wheel in a fresh venv, a Debian package in a fresh Debian root."""

import stat
from pathlib import Path

import pytest

from tunnel.lab import testbed
from tunnel.lab.testbed import WIREGUARD_GO_ENV, wireguard_go


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
