"""The command-line options of the scenarios, for `pyvpn bench`."""

from __future__ import annotations

import argparse

from . import NAMES, selected
from .frames import SIDE_SPAN
from .run import DEFAULT_HOSTS, DEFAULT_PEERS, DEFAULT_TRIALS, Scenario, Settings

MAX_HOSTS = SIDE_SPAN  # the generated hosts of the two sides must not overlap
MAX_PEERS = 25  # an underlay /24 and a device letter for each spoke
MAX_TRIALS = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenarios",
        metavar="NAMES",
        help="comma-separated tun-vs-tap scenarios to run after the contenders, or all "
        f"(default: none): {', '.join(NAMES)}",
    )
    parser.add_argument(
        "--hosts",
        default=",".join(map(str, DEFAULT_HOSTS)),
        metavar="N,...",
        help="LAN hosts a side in the chatter scenario, one run per size (default "
        f"{','.join(map(str, DEFAULT_HOSTS))})",
    )
    parser.add_argument(
        "--peers",
        type=int,
        default=DEFAULT_PEERS,
        metavar="N",
        help=f"spokes of the hub in the flooding scenario (default {DEFAULT_PEERS})",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=DEFAULT_TRIALS,
        metavar="N",
        help=f"trials of the first-packet scenario (default {DEFAULT_TRIALS})",
    )


def from_arguments(args: argparse.Namespace) -> tuple[list[Scenario], Settings]:
    """The scenarios asked for and their settings (--time and --mtu among them);
    ValueError says what is wrong."""
    chosen = selected(args.scenarios)
    try:
        hosts = tuple(int(n) for n in args.hosts.split(",") if n.strip())
    except ValueError:
        raise ValueError(f"--hosts takes numbers separated by commas, not {args.hosts!r}") from None
    if not hosts or not all(1 <= n <= MAX_HOSTS for n in hosts):
        raise ValueError(f"--hosts must list sizes between 1 and {MAX_HOSTS}")
    if not 2 <= args.peers <= MAX_PEERS:
        raise ValueError(f"--peers must be between 2 and {MAX_PEERS}")
    if not 1 <= args.trials <= MAX_TRIALS:
        raise ValueError(f"--trials must be between 1 and {MAX_TRIALS}")
    return chosen, Settings(args.time, args.mtu, hosts, args.peers, args.trials)
