"""Ways of running the benchmark's work, each through its own usual API.

A backend makes an *executor-like* object for ``workers`` workers; the runner
only needs ``map(fn, items) -> list`` and ``call(fn, arg)`` (one round trip),
plus ``close()``. A backend whose library is missing reports why instead of
disappearing from the table.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..api import map as concur_map
from ..auto import AutoPool
from ..processes import ProcessPool, default_start_method
from ..threads import ThreadPool


class Runner:
    """What the runner drives: ``map``, a single ``call``, and ``close``."""

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (nothing to do for serial)."""


class SerialRunner(Runner):
    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return [fn(item) for item in items]

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        return fn(arg)


class AutoRunner(Runner):
    """concur's auto backend: concur.map for runs, an AutoPool for single calls."""

    def __init__(self, workers: int | None) -> None:
        self.workers = workers
        self.pool: AutoPool | None = None

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(concur_map(fn, items, workers=self.workers))

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        if self.pool is None:
            self.pool = AutoPool()
        return self.pool.submit(fn, arg).result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


class MultiprocessingPoolRunner(Runner):
    """multiprocessing.Pool through its own map (its default chunksize)."""

    def __init__(self, workers: int | None) -> None:
        self.pool = _mp_context().Pool(workers)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return self.pool.map(fn, items)

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        return self.pool.apply(fn, (arg,))

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class ExecutorRunner(Runner):
    def __init__(self, executor: Executor, chunksize: int | None = None) -> None:
        self.executor = executor
        self.chunksize = chunksize

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if self.chunksize is None:
            return list(self.executor.map(fn, items))
        return list(self.executor.map(fn, items, chunksize=self.chunksize))

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        return self.executor.submit(fn, arg).result()

    def close(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass(frozen=True)
class Backend:
    name: str
    family: str  # "serial", "concur" or "peer"
    make: Callable[[int | None], Runner]
    kind: str  # "none", "thread", "process" or "auto" (compared with every peer)

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or None."""
        return None


def _mp_context() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context(default_start_method())


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in [
        Backend("serial", "serial", lambda workers: SerialRunner(), "none"),
        Backend("concur-thread", "concur", lambda w: ExecutorRunner(ThreadPool(w)), "thread"),
        Backend("concur-process", "concur", lambda w: ExecutorRunner(ProcessPool(w)), "process"),
        Backend("concur-auto", "concur", AutoRunner, "auto"),
        Backend(
            "ThreadPoolExecutor", "peer", lambda w: ExecutorRunner(ThreadPoolExecutor(w)), "thread"
        ),
        Backend(
            "ProcessPoolExecutor",
            "peer",
            lambda w: ExecutorRunner(ProcessPoolExecutor(w, mp_context=_mp_context())),
            "process",
        ),
        Backend("multiprocessing.Pool", "peer", MultiprocessingPoolRunner, "process"),
    ]
}
