"""Scenarios, and the loop that runs them interleaved and repeated.

Runs of different backends alternate (repeat 1: A B C, repeat 2: B C A, ...)
so a burst of noise on a shared machine hits them all alike; the report
gives the median with min and max, and ratios computed from medians measured
in the same run.
"""

from __future__ import annotations

import os
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import auto_scenarios, bigdata, workloads
from .backends import BACKENDS, STATS, Backend, close_shared


@dataclass
class BenchConfig:
    quick: bool = False
    scenarios: Sequence[str] | None = None
    backends: Sequence[str] | None = None
    repeat: int | None = None
    scale: float = 1.0  # multiplies the work; tests use a tiny scale
    stats: bool = False  # keep each concur pool's stats() (the last one per backend)


@dataclass
class Scenario:
    name: str
    about: str
    unit: str  # "s" (total time), "µs/call" or "results"
    measure: Callable[[Backend, BenchConfig], float]
    skip: Callable[[Backend], str | None] = lambda backend: None
    higher_is_better: bool = False
    quick: bool = True  # part of --quick
    # The backends it runs on: None for every one that is not dedicated, and
    # dedicated ones only where a scenario names them (the bare pipe, the
    # fixed thread counts auto is measured against).
    backends: tuple[str, ...] | None = None
    extra: tuple[str, ...] = ()

    def runs(self, backend: str) -> bool:
        if self.backends is not None:
            return backend in self.backends or backend in self.extra
        return not BACKENDS[backend].dedicated or backend in self.extra


@dataclass
class Result:
    scenario: str
    backend: str
    samples: list[float] = field(default_factory=list)
    error: str | None = None
    pool_stats: Any = None  # with --stats: the last concur pool's PoolStats

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def _seed_cpu(backend: Backend, cfg: BenchConfig) -> float:
    tasks = 5
    n = int((4_000_000 if cfg.quick else 30_000_000) * cfg.scale)
    return timed_map(backend, workloads.count_to, [n] * tasks, workers=tasks)


def _seed_io(backend: Backend, cfg: BenchConfig) -> float:
    tasks = 5
    seconds = (0.1 if cfg.quick else 1.0) * cfg.scale
    return timed_map(backend, workloads.sleep_for, [seconds] * tasks, workers=tasks)


def _cpu_20(backend: Backend, cfg: BenchConfig) -> float:
    ms = (20 if cfg.quick else 50) * cfg.scale
    return timed_map(backend, workloads.spin_ms, [ms] * 20, workers=None)


def _io_many(backend: Backend, cfg: BenchConfig) -> float:
    seconds = (0.003 if cfg.quick else 0.1) * cfg.scale
    return timed_map(backend, workloads.sleep_for, [seconds] * 200, workers=None)


def _tiny(backend: Backend, cfg: BenchConfig) -> float:
    n = max(10, int((5_000 if cfg.quick else 100_000) * cfg.scale))
    items = list(range(n))
    return timed_map(backend, workloads.square, items, None, [x * x for x in items])


def _changing(backend: Backend, cfg: BenchConfig) -> float:
    heavy = max(2, int((10 if cfg.quick else 60) * cfg.scale))
    items = list(range(workloads.CACHE_HITS + heavy))
    return timed_map(backend, workloads.cache_then_compute, items, workers=None)


def _mixed(backend: Backend, cfg: BenchConfig) -> float:
    items = list(range(max(4, int((20 if cfg.quick else 100) * cfg.scale))))
    return timed_map(backend, workloads.mixed, items, workers=None)


def timed_map(
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


def _startup(backend: Backend, cfg: BenchConfig) -> float:
    """Seconds from creating the pool to the first result (2 workers)."""
    start = time.perf_counter()
    runner = backend.make(2)
    try:
        runner.call(workloads.noop, 1)
        return time.perf_counter() - start
    finally:
        runner.close()


CRASH_TASKS = 100


def _crash(backend: Backend, cfg: BenchConfig) -> float:
    """Results delivered out of 100 tasks when task 50 kills its worker."""
    ms = 10.0 * min(1.0, cfg.scale)
    items = [(i, CRASH_TASKS // 2, os.getpid(), ms) for i in range(CRASH_TASKS)]
    runner = backend.make(2)
    try:
        # A library that loses the task waits for it forever; give it this long.
        patience = 2.0 if cfg.quick else max(1.0, 10.0 * cfg.scale)
        return float(runner.deliver(workloads.crash_one, items, time.monotonic() + patience))
    finally:
        runner.close()


def _no_crash_in_process(backend: Backend) -> str | None:
    if backend.kind in ("none", "thread"):
        return "skipped: a worker that dies in this process takes the whole process with it"
    return None


def _latency(backend: Backend, cfg: BenchConfig) -> float:
    """Median round trip of a no-op on a warm pool, in microseconds."""
    calls = max(20, int((300 if cfg.quick else 3000) * cfg.scale))
    budget = 0.3 if cfg.quick else 3.0  # seconds: a slow peer gets fewer calls
    runner = backend.make(2)
    try:
        for i in range(10 if cfg.quick else 50):  # warm up: start the workers, fill caches
            runner.call(workloads.noop, i)
        samples = []
        clock = time.perf_counter
        stop = clock() + budget
        for i in range(calls):
            start = clock()
            runner.call(workloads.noop, i)
            samples.append(clock() - start)
            if start > stop and len(samples) >= 20:
                break
    finally:
        runner.close()
    return statistics.median(samples) * 1e6


def _auto(name: str, about: str, measure: Callable[[Backend, BenchConfig], float]) -> Scenario:
    return Scenario(name, about, "s", measure, quick=False, backends=auto_scenarios.FIXED)


_AUTO_SCENARIOS = [
    _auto(
        "busy-tiny",
        "5,000 calls of x * x while another thread of the program computes",
        auto_scenarios.busy_tiny,
    ),
    _auto(
        "busy-cpu",
        "16 × 30 ms pure-Python computing while another thread of the program computes",
        auto_scenarios.busy_cpu,
    ),
    _auto(
        "capacity-server",
        "100 GETs to a local HTTP server that serves 5 at a time (backlog 5, 20 ms each)",
        auto_scenarios.capacity_server,
    ),
    _auto("hashing", "64 × SHA-256 of a 4 MB block (releases the GIL)", auto_scenarios.hashing),
    _auto(
        "compression", "32 × zlib of a 2 MB block (releases the GIL)", auto_scenarios.compression
    ),
    _auto(
        "repeated",
        "5 runs one after another of 16 × 30 ms computing (one pool kept by fixed choices)",
        auto_scenarios.repeated,
    ),
    _auto(
        "nested",
        "8 tasks that each run concur.map over 8 items of 10 ms computing",
        auto_scenarios.nested,
    ),
]


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
            quick=False,
        ),
        Scenario(
            "io-many",
            "200 sleeps of 0.1 s (3 ms with --quick), no worker count given",
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
            quick=False,
        ),
        Scenario(
            "mixed",
            "items alternate: wait 20 ms / compute 20 ms (100 items; 20 with --quick)",
            "s",
            _mixed,
            quick=False,
        ),
        Scenario(
            "latency",
            "warm-pool round trip of a no-op, submit(...).result(), median",
            "µs/call",
            _latency,
            extra=("bare-pipe",),
        ),
        Scenario(
            "big-args",
            "16 tasks given the same 80 MB array (8 MB with --quick), 2 warm workers",
            "s",
            bigdata.big_args,
            skip=bigdata.needs_numpy,
        ),
        Scenario(
            "big-results",
            "16 tasks returning a 16 MB array each (4 MB with --quick), 2 warm workers",
            "s",
            bigdata.big_results,
            skip=bigdata.needs_numpy,
        ),
        Scenario(
            "result-peak",
            "caller's peak memory rise for one 200 MB result (32 MB with --quick)",
            "× size",
            bigdata.result_peak,
            skip=bigdata.peak_unavailable,
        ),
        Scenario(
            "startup",
            "from creating a pool of 2 workers to its first result",
            "s",
            _startup,
        ),
        *_AUTO_SCENARIOS,
        Scenario(
            "crash",
            "100 tasks of 10 ms; task 50 kills its worker: results still delivered",
            "results",
            _crash,
            skip=_no_crash_in_process,
            higher_is_better=True,
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
    if cfg.quick and not cfg.scenarios:
        scenarios = [name for name in scenarios if SCENARIOS[name].quick]
    backends = _selected(cfg.backends, BACKENDS, "backend")
    if cfg.quick and not cfg.backends:
        backends = [name for name in backends if BACKENDS[name].quick]
    repeat = cfg.repeat or (2 if cfg.quick else 3)
    results: dict[tuple[str, str], Result] = {}
    try:
        _run_all(cfg, scenarios, backends, repeat, results, progress)
    finally:
        close_shared()
    return results


def _run_all(
    cfg: BenchConfig,
    scenarios: list[str],
    backends: list[str],
    repeat: int,
    results: dict[tuple[str, str], Result],
    progress: Callable[[str], None] | None,
) -> None:
    for scenario_name in scenarios:
        scenario = SCENARIOS[scenario_name]
        for r in range(repeat):
            shift = r % len(backends)
            for backend_name in backends[shift:] + backends[:shift]:
                if not scenario.runs(backend_name):
                    continue
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
                _measure(scenario, backend, cfg, result)


def _measure(scenario: Scenario, backend: Backend, cfg: BenchConfig, result: Result) -> None:
    """One run; with ``cfg.stats`` the concur pools it closes leave their stats in ``result``."""
    if cfg.stats:
        STATS.take = lambda stats: setattr(result, "pool_stats", stats)
    try:
        result.samples.append(scenario.measure(backend, cfg))
    except Exception as exc:
        result.error = f"failed: {type(exc).__name__}: {exc}"
        result.error += "\n" + traceback.format_exc(limit=3)
    finally:
        STATS.take = None
