"""The native plane's crypto pipeline alone, for `pyvpn bench --pipeline`
(tunnel/lab/pipeline.py runs it as a program, as the lab runs the tunnels):

    python -m tunnel.planes.pipeline_bench WORKERS,... ROUNDS SIZE

prints a JSON object: for each count of crypto workers, a list of rounds,
each the packets of SIZE bytes sealed and opened per second of wall time and
per CPU-second of the process (native/pipeline_bench.c), the counts taking
turns so that a drift of the machine reaches them alike."""

import json
import sys

from . import dp

PACKETS = 200_000  # sealed and opened per round: a few tenths of a second each


def measure(workers: list[int], rounds: int, size: int) -> dict[int, list[tuple[float, float]]]:
    rates: dict[int, list[tuple[float, float]]] = {n: [] for n in workers}
    for _ in range(rounds):
        for n in workers:
            seconds, cpu_seconds = dp.bench_pipeline(n, PACKETS, size)
            rates[n].append((PACKETS / seconds, PACKETS / cpu_seconds))
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
