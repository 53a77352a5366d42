"""Scenarios for auto: the programs it must choose well for, each against
every fixed choice (serial, ThreadPoolExecutor with 4, 32 and 256 threads,
and ProcessPoolExecutor with a worker per CPU).

Each backend runs the work as a program would with it; auto's ratio to the
best of them is in the report's "vs best" column.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import capacity, workloads

if TYPE_CHECKING:
    from .backends import Backend
    from .runner import BenchConfig

# What the auto scenarios run on (the last three only there).
FIXED = (
    "serial",
    "concur-auto",
    "ProcessPoolExecutor",
    "ThreadPoolExecutor-4",
    "ThreadPoolExecutor-32",
    "ThreadPoolExecutor-256",
)


def _map(
    backend: Backend, fn: Callable[[Any], Any], items: list[Any], expected: list[Any]
) -> float:
    from .runner import timed_map  # the runner lists these scenarios

    return timed_map(backend, fn, items, None, expected)


@contextlib.contextmanager
def _busy_thread() -> Iterator[None]:
    """Another thread of the program computing all along (a monitor, a UI)."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            workloads.count_to(10_000)

    thread = threading.Thread(target=spin, name="bench-busy", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def busy_tiny(backend: Backend, cfg: BenchConfig) -> float:
    items = list(range(max(10, int(5_000 * cfg.scale))))
    with _busy_thread():
        return _map(backend, workloads.square, items, [x * x for x in items])


def busy_cpu(backend: Backend, cfg: BenchConfig) -> float:
    ms = 30 * cfg.scale
    with _busy_thread():
        return _map(backend, workloads.spin_ms, [ms] * 16, [ms] * 16)


def capacity_server(backend: Backend, cfg: BenchConfig) -> float:
    n = max(10, int(100 * cfg.scale))
    with capacity.running() as url:
        return _map(backend, workloads.http_get, [url] * n, [2] * n)


def hashing(backend: Backend, cfg: BenchConfig) -> float:
    n = max(4, int(64 * cfg.scale))
    expected = [workloads.sha256_block(4)] * n
    return _map(backend, workloads.sha256_block, [4] * n, expected)


def compression(backend: Backend, cfg: BenchConfig) -> float:
    n = max(4, int(32 * cfg.scale))
    expected = [workloads.compress_block(2)] * n
    return _map(backend, workloads.compress_block, [2] * n, expected)


def repeated(backend: Backend, cfg: BenchConfig) -> float:
    """Five runs of 16 × 30 ms computing, one after another: a fixed choice
    keeps its pool between them, as a program that made one would."""
    ms = 30 * cfg.scale
    start = time.perf_counter()
    runner = backend.make(None)
    try:
        for _ in range(5):
            if runner.map(workloads.spin_ms, [ms] * 16) != [ms] * 16:
                raise AssertionError(f"{backend.name} returned wrong results")
    finally:
        runner.close()
    return time.perf_counter() - start


def nested(backend: Backend, cfg: BenchConfig) -> float:
    n = workloads.counts_for(10 * cfg.scale)
    return _map(backend, workloads.nested, [n] * 8, [8 * n] * 8)
