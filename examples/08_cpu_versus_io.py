"""Lesson 8: CPU-bound work wants processes; IO-bound work wants threads.

The same jobs timed serially, on threads and on processes, then with
concur's auto backend, which measures the work and says what it chose.
Threads do not speed up pure-Python CPU work (the GIL lets one thread run
Python at a time); processes do not help waiting much but cost a start-up.

Run: python examples/08_cpu_versus_io.py
"""

import os
import time

import concur


def crunch(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def wait(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def timed(label: str, fn, items, backend: str) -> None:
    start = time.perf_counter()
    results = concur.map(fn, items, backend=backend)
    took = time.perf_counter() - start
    reason = f"  <- {results.decision.reason}" if backend == "auto" else ""
    print(f"  {label:10} {took:6.2f} s{reason}")


if __name__ == "__main__":
    print(f"{os.cpu_count()} CPUs")
    cpu_jobs, io_jobs = [2_000_000] * 8, [0.1] * 20
    for kind, fn, items in (("CPU-bound", crunch, cpu_jobs), ("IO-bound", wait, io_jobs)):
        print(f"{kind}: {len(items)} jobs")
        for backend in ("inline", "thread", "process", "auto"):
            timed(backend, fn, items, backend)
