"""What --help lists, read from pyvpn's argparse parser: the man pages
(test_manpages.py) and bash completion (test_completion.py) must offer the same."""

import argparse


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's name and its own parser."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def long_options(parser: argparse.ArgumentParser) -> set[str]:
    """The parser's own --options, --help aside."""
    return {
        s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"
    }
