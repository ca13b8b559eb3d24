"""Bash completion as a user at a prompt gets it: subcommands and options as
--help has them, running tunnels' names, config files."""

import argparse
import os
import subprocess
from pathlib import Path

import pytest

from tunnel.cli import build_parser
from tunnel.control.config import CONFIG_DIRS

from .cli_help import long_options, subcommands
from .conftest import ROOT, uapi_listener

SCRIPT = ROOT / "configs" / "bash-completion" / "pyvpn"


def complete(*words: str, cwd: Path | None = None) -> list[str]:
    """What Tab offers after `words` (the last one being completed)."""
    line = " ".join(f"'{w}'" for w in words)
    program = "_pyvpn_wg" if words[0] == "pyvpn-wg" else "_pyvpn"
    script = (
        f"source {SCRIPT}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
        f'{program}; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
    )
    assert result.stderr == ""
    return sorted(w for w in result.stdout.splitlines() if w)


def test_subcommands_are_those_of_help():
    assert complete("pyvpn", "") == sorted([*subcommands(build_parser()), "--help", "--version"])
    assert complete("pyvpn", "re") == ["reload"]


@pytest.mark.parametrize("command", sorted(subcommands(build_parser())))
def test_options_are_those_of_help(command: str):
    sub: argparse.ArgumentParser = subcommands(build_parser())[command]
    assert complete("pyvpn", command, "--") == sorted([*long_options(sub), "--help"])


FLEET = subcommands(subcommands(build_parser())["fleet"])


@pytest.mark.parametrize("command", sorted(FLEET))
def test_fleet_commands_and_their_options_are_those_of_help(command: str):
    assert complete("pyvpn", "fleet", "") == sorted([*FLEET, "--help"])
    assert complete("pyvpn", "fleet", command, "--") == sorted(
        [*long_options(FLEET[command]), "--help"]
    )


@pytest.mark.xdist_group("machine-wide")  # every tunnel's socket, /etc: one such test at a time
def test_down_and_show_offer_running_tunnels():
    with uapi_listener("cmpl") as (name, _):
        assert name in complete("pyvpn", "down", "")
        assert complete("pyvpn", "show", name[:6]) == [name]
    assert name not in complete("pyvpn", "down", "")


@pytest.mark.xdist_group("machine-wide")  # every tunnel's socket, /etc: one such test at a time
def test_up_offers_config_files_and_directories(tmp_path: Path):
    for file in ("a.toml", "wg0.conf", "notes.txt"):
        (tmp_path / file).write_text("")
    (tmp_path / "etc").mkdir()
    expected = ["a.toml", "etc/", "wg0.conf", *bare_names()]
    assert complete("pyvpn", "up", "", cwd=tmp_path) == sorted(expected)
    assert complete("pyvpn", "mesh", "", cwd=tmp_path) == ["a.toml", "etc/"]


def bare_names() -> list[str]:
    """The host's configs that `pyvpn up NAME` would read (config.CONFIG_DIRS)."""
    return [f.stem for d, suffix in CONFIG_DIRS for f in d.glob(f"*{suffix}") if f.is_file()]


@pytest.mark.xdist_group("machine-wide")  # every tunnel's socket, /etc: one such test at a time
def test_up_offers_the_bare_names_of_configs_in_etc(tmp_path: Path):
    name = f"cmpl{os.getpid()}"[:15]
    path = CONFIG_DIRS[1][0] / f"{name}.conf"
    made = not path.parent.exists()
    path.parent.mkdir(mode=0o700, exist_ok=True)
    try:
        path.write_text("")
        for command in ("up", "reload", "convert"):
            assert complete("pyvpn", command, name[:6], cwd=tmp_path) == [name]
        assert complete("pyvpn", "up", f"./{name[:6]}", cwd=tmp_path) == []
    finally:
        path.unlink()
        if made:
            path.parent.rmdir()
    assert complete("pyvpn", "up", name[:6], cwd=tmp_path) == []


def test_values_of_choice_options():
    assert complete("pyvpn", "demo", "--mode", "") == ["both", "tap", "tun"]
    assert complete("pyvpn", "demo", "--datapath", "n") == ["native"]
    assert complete("pyvpn", "fleet", "admit", "office", "a", "--mode", "") == ["tap", "tun"]


def test_pyvpn_wg_options():
    assert complete("pyvpn-wg", "--") == ["--foreground", "--help", "--version"]


def test_scenario_names_are_the_benchs():
    from tunnel.lab.scenarios import NAMES

    assert complete("pyvpn", "bench", "--scenarios", "") == sorted(["all", *NAMES])
