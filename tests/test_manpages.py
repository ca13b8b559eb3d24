"""The man pages render with man -l and say what --help says: every subcommand,
every option and every config key appears in them."""

import argparse
import os
import re
import subprocess

import pytest

from tunnel.cli import build_parser
from tunnel.control import wg_quick
from tunnel.control.config import INTERFACE_KEYS, PEER_KEYS
from tunnel.fleet.settings import KEYS as FLEET_KEYS

from .cli_help import long_options, subcommands
from .conftest import ROOT

MAN = ROOT / "docs" / "man"
PAGES = ["pyvpn.8", "pyvpn-wg.8", "pyvpn.toml.5"]


def rendered(page: str) -> str:
    result = subprocess.run(
        ["man", "--warnings", "-l", str(MAN / page)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "200"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"{page}: {result.stderr}"
    # Piped, man overstrikes bold and underlined text; it may also justify.
    plain = re.sub(r".\x08", "", result.stdout).replace("\u2010", "-").replace("\u2212", "-")
    return re.sub(r"\s+", " ", plain)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_warnings(page):
    text = rendered(page)
    assert "NAME" in text and "SYNOPSIS" in text and "SEE ALSO" in text


def undocumented(text: str, parser: argparse.ArgumentParser, command: str = "pyvpn") -> list[str]:
    """What of the parser's commands and options the text lacks, those of a
    command's own commands (`pyvpn fleet admit`) too."""
    missing = [option for option in long_options(parser) if option not in text]
    for name, sub in subcommands(parser).items():
        if f"{command} {name}" not in text:
            missing.append(name)
        missing += [f"{name} {option}" for option in long_options(sub) if option not in text]
        if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            missing += [f"{name} {m}" for m in undocumented(text, sub, f"{command} {name}")]
    return missing


def test_pyvpn8_names_every_subcommand_and_option():
    missing = undocumented(rendered("pyvpn.8"), build_parser())
    assert not missing, f"pyvpn.8 lacks: {', '.join(missing)}"


def test_pyvpn_wg8_names_every_option_and_variable_of_its_help():
    from tunnel.pyvpn_wg import HELP

    words = set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*|\b[A-Z][A-Z_]{3,}\b", HELP))
    assert {"--foreground", "LOG_LEVEL"} <= words
    text = rendered("pyvpn-wg.8")
    missing = sorted(w for w in words | {"--version", "--help"} if w not in text)
    assert not missing, f"pyvpn-wg.8 lacks: {', '.join(missing)}"


def test_pyvpn_toml5_names_every_config_key():
    text = rendered("pyvpn.toml.5")
    missing = [k for k in sorted(INTERFACE_KEYS | PEER_KEYS | FLEET_KEYS) if k not in text]
    missing += [k for k in (*wg_quick.INTERFACE.values(), *wg_quick.PEER.values()) if k not in text]
    assert not missing, f"pyvpn.toml.5 lacks: {', '.join(missing)}"


def test_the_sync_check_catches_a_new_command_and_option():
    parser = build_parser()
    subcommands(parser)["show"].add_argument("--colour")
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action.add_parser("frobnicate")
    assert undocumented(rendered("pyvpn.8"), parser) == ["show --colour", "frobnicate"]
