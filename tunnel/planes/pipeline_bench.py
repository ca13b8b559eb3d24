"""The native plane's crypto pipeline alone, for `pyvpn bench --pipeline`
(tunnel/lab/pipeline.py runs it as a program, as the lab runs the tunnels):

    python -m tunnel.planes.pipeline_bench WORKERS,... ROUNDS SIZE

prints a JSON object: for each count of crypto workers, the packets of SIZE
bytes sealed and opened per second in each round (native/pipeline_bench.c),
the counts taking turns so that a drift of the machine reaches them alike."""

import json
import sys

from . import dp

PACKETS = 200_000  # sealed and opened per round: a few tenths of a second each


def measure(workers: list[int], rounds: int, size: int) -> dict[int, list[float]]:
    rates: dict[int, list[float]] = {n: [] for n in workers}
    for _ in range(rounds):
        for n in workers:
            rates[n].append(PACKETS / dp.bench_pipeline(n, PACKETS, size))
    return rates


def main(argv: list[str]) -> int:
    counts, rounds, size = argv
    try:
        rates = measure([int(n) for n in counts.split(",")], int(rounds), int(size))
    except OSError as e:
        print(e, file=sys.stderr)
        return 1
    print(json.dumps(rates))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
