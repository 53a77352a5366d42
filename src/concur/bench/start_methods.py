"""Measure each multiprocessing start method's cost in a concur ProcessPool.

    python -m concur.bench.start_methods [--repeat N] [--calls N]

Prints, per start method: start-up (pool creation to the first result of 2
workers; the fork server's own start is excluded by a warm-up) and the warm
round trip of a no-op (median). The figures in docs/start-methods.md come
from this script.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

from ..processes import ProcessPool
from .workloads import noop


def startup(method: str) -> float:
    start = time.perf_counter()
    with ProcessPool(2, mp_context=method) as pool:
        list(pool.map(noop, [1, 2], chunksize=1))
        elapsed = time.perf_counter() - start
    return elapsed


def round_trip(method: str, calls: int) -> float:
    with ProcessPool(1, mp_context=method) as pool:
        for i in range(50):
            pool.submit(noop, i).result()
        samples = []
        for i in range(calls):
            t = time.perf_counter()
            pool.submit(noop, i).result()
            samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    methods = multiprocessing.get_all_start_methods()
    for method in methods:  # warm-up: start the fork server and resource tracker once
        startup(method)
    starts: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.repeat):
        for method in methods:
            starts[method].append(startup(method))
    trips = {m: round_trip(m, args.calls) for m in methods}
    print(f"{'start method':<12} {'start-up ms (median, min-max)':>32} {'round trip µs':>15}")
    for method in methods:
        ms = [x * 1e3 for x in starts[method]]
        spread = f"({min(ms):.1f}-{max(ms):.1f})"
        print(
            f"{method:<12} {statistics.median(ms):>14.1f} {spread:<17} {trips[method] * 1e6:>12.1f}"
        )


if __name__ == "__main__":
    main()
