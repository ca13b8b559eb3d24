"""`pyvpn bench --pipeline`: the native plane's crypto pipeline alone
(native/pipeline_bench.c, run by tunnel/planes/pipeline_bench.py), without a
device, a socket or a second namespace. The calling thread makes and releases
the slots as the I/O worker does; the crypto workers seal and open packets of
the tunnel's MTU in batches of 1024. It shows how the crypto scales with the
workers where cores are free; the tunnels' figures (`pyvpn bench --workers`)
add the kernel's work."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from .testbed import pyvpn_env

DEFAULT_WORKERS = (1, 2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """bench's --pipeline; --workers, --rounds and --mtu are bench's own."""
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="instead of the tunnel benchmark: the native plane's crypto pipeline alone, "
        "packets sealed and opened per second with each --workers count (default 1,2)",
    )


def run(args: argparse.Namespace, workers: list[int] | None) -> int:
    counts = [n for n in workers or DEFAULT_WORKERS if n > 0]
    if not counts:
        print("pyvpn bench: --pipeline takes --workers of 1 or more", file=sys.stderr)
        return 2
    program = [sys.executable, "-m", "tunnel.planes.pipeline_bench"]
    argv = [*program, ",".join(map(str, counts)), str(args.rounds), str(args.mtu)]
    done = subprocess.run(argv, capture_output=True, text=True, env=pyvpn_env(), check=False)
    if done.returncode:
        print(f"pyvpn bench: --pipeline: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return 1
    rounds = {int(n): r for n, r in json.loads(done.stdout).items()}
    base = statistics.median(wall for wall, _ in rounds[counts[0]])
    print(f"crypto pipeline alone: {args.mtu}-byte packets, each sealed and opened once; "
          f"{os.cpu_count()} cores; median of {args.rounds} round(s), in turns")  # fmt: skip
    for n in counts:
        wall = [w for w, _ in rounds[n]]
        rate, per_cpu = statistics.median(wall), statistics.median(c for _, c in rounds[n])
        print(f"  {n} crypto worker{'s' if n > 1 else ' '}: {rate:>10,.0f} packets/s "
              f"(rounds {min(wall):,.0f} to {max(wall):,.0f}), x{rate / base:.2f}; "
              f"{per_cpu:,.0f} per CPU-second")  # fmt: skip
    print(
        "Packets per CPU-second (every thread of the process) show the pipeline's own "
        "cost; packets per second scale with the workers only where cores are free."
    )
    return 0
