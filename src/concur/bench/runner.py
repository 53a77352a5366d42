"""Scenarios, and the loop that runs them interleaved and repeated.

Runs of different backends alternate (repeat 1: A B C, repeat 2: B C A, ...)
so a burst of noise on a shared machine hits them all alike; the report
gives the median with min and max, and ratios computed from medians measured
in the same run.
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import workloads
from .backends import BACKENDS, Backend


@dataclass
class BenchConfig:
    quick: bool = False
    scenarios: Sequence[str] | None = None
    backends: Sequence[str] | None = None
    repeat: int | None = None
    scale: float = 1.0  # multiplies the work; tests use a tiny scale


@dataclass
class Scenario:
    name: str
    about: str
    unit: str  # "s" (total time) or "µs/call"
    measure: Callable[[Backend, BenchConfig], float]
    skip: Callable[[Backend], str | None] = lambda backend: None


@dataclass
class Result:
    scenario: str
    backend: str
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def _seed_cpu(backend: Backend, cfg: BenchConfig) -> float:
    tasks = 5
    n = int((4_000_000 if cfg.quick else 30_000_000) * cfg.scale)
    return _timed_map(backend, workloads.count_to, [n] * tasks, workers=tasks)


def _seed_io(backend: Backend, cfg: BenchConfig) -> float:
    tasks = 5
    seconds = (0.1 if cfg.quick else 1.0) * cfg.scale
    return _timed_map(backend, workloads.sleep_for, [seconds] * tasks, workers=tasks)


def _cpu_20(backend: Backend, cfg: BenchConfig) -> float:
    ms = (20 if cfg.quick else 50) * cfg.scale
    return _timed_map(backend, workloads.spin_ms, [ms] * 20, workers=None)


def _io_many(backend: Backend, cfg: BenchConfig) -> float:
    seconds = (0.005 if cfg.quick else 0.1) * cfg.scale
    return _timed_map(backend, workloads.sleep_for, [seconds] * 200, workers=None)


def _tiny(backend: Backend, cfg: BenchConfig) -> float:
    n = max(10, int((5_000 if cfg.quick else 100_000) * cfg.scale))
    items = list(range(n))
    return _timed_map(backend, workloads.square, items, None, [x * x for x in items])


def _changing(backend: Backend, cfg: BenchConfig) -> float:
    heavy = max(2, int((10 if cfg.quick else 60) * cfg.scale))
    items = list(range(workloads.CACHE_HITS + heavy))
    return _timed_map(backend, workloads.cache_then_compute, items, workers=None)


def _mixed(backend: Backend, cfg: BenchConfig) -> float:
    items = list(range(max(4, int((20 if cfg.quick else 100) * cfg.scale))))
    return _timed_map(backend, workloads.mixed, items, workers=None)


def _timed_map(
    backend: Backend,
    fn: Callable[[Any], Any],
    items: list[Any],
    workers: int | None,
    expected: list[Any] | None = None,
) -> float:
    """As the seed times it: start the workers, run everything, wait for the end."""
    start = time.perf_counter()
    runner = backend.make(workers)
    try:
        results = runner.map(fn, items)
    finally:
        runner.close()
    elapsed = time.perf_counter() - start
    if results != (items if expected is None else expected):
        raise AssertionError(f"{backend.name} returned wrong results")
    return elapsed


def _latency(backend: Backend, cfg: BenchConfig) -> float:
    """Median round trip of a no-op on a warm pool, in microseconds."""
    calls = max(20, int((300 if cfg.quick else 3000) * cfg.scale))
    runner = backend.make(2)
    try:
        for i in range(50):  # warm up: start the workers, fill caches
            runner.call(workloads.noop, i)
        samples = []
        clock = time.perf_counter
        for i in range(calls):
            start = clock()
            runner.call(workloads.noop, i)
            samples.append(clock() - start)
    finally:
        runner.close()
    return statistics.median(samples) * 1e6


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "seed-cpu",
            "5 pure-Python counting tasks, one worker each (the seed's CPU experiment, scaled)",
            "s",
            _seed_cpu,
        ),
        Scenario(
            "seed-io",
            "5 sleeping tasks, one worker each (the seed's IO experiment)",
            "s",
            _seed_io,
        ),
        Scenario(
            "cpu-20",
            "20 tasks of about 50 ms pure-Python computing (20 ms with --quick), default workers",
            "s",
            _cpu_20,
        ),
        Scenario(
            "io-many",
            "200 sleeps of 0.1 s (5 ms with --quick), no worker count given",
            "s",
            _io_many,
        ),
        Scenario(
            "tiny",
            "100,000 calls of x * x (5,000 with --quick)",
            "s",
            _tiny,
        ),
        Scenario(
            "changing",
            "2,000 cache hits, then 60 items of 25 ms computing (10 with --quick)",
            "s",
            _changing,
        ),
        Scenario(
            "mixed",
            "items alternate: wait 20 ms / compute 20 ms (100 items; 20 with --quick)",
            "s",
            _mixed,
        ),
        Scenario(
            "latency",
            "warm-pool round trip of a no-op, submit(...).result(), median",
            "µs/call",
            _latency,
        ),
    ]
}


def _selected(names: Sequence[str] | None, table: dict[str, Any], what: str) -> list[str]:
    if not names:
        return list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(table)}")
    return list(names)


def run_bench(
    cfg: BenchConfig, progress: Callable[[str], None] | None = None
) -> dict[tuple[str, str], Result]:
    """Run every selected scenario on every selected backend; return the samples."""
    scenarios = _selected(cfg.scenarios, SCENARIOS, "scenario")
    backends = _selected(cfg.backends, BACKENDS, "backend")
    repeat = cfg.repeat or (3 if cfg.quick else 5)
    results: dict[tuple[str, str], Result] = {}
    for scenario_name in scenarios:
        scenario = SCENARIOS[scenario_name]
        for r in range(repeat):
            shift = r % len(backends)
            for backend_name in backends[shift:] + backends[:shift]:
                result = results.setdefault(
                    (scenario_name, backend_name), Result(scenario_name, backend_name)
                )
                if result.error is not None:
                    continue
                backend = BACKENDS[backend_name]
                reason = backend.unavailable() or scenario.skip(backend)
                if reason:
                    result.error = reason
                    continue
                if progress:
                    progress(f"{scenario_name} · {backend_name} · run {r + 1}/{repeat}")
                try:
                    result.samples.append(scenario.measure(backend, cfg))
                except Exception as exc:
                    result.error = f"failed: {type(exc).__name__}: {exc}"
                    result.error += "\n" + traceback.format_exc(limit=3)
    return results
