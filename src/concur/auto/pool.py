"""``AutoPool``: an Executor that learns, per function, where ``submit`` runs it."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .. import _future, _stats, _task
from .. import _pool as _pool_base
from .._pool import ChunkResult, TaskOptions
from .._proc import cpu_count, host_share
from .._progress import Bar, Shown
from .._stream import length_hint
from ..threads import ThreadPool
from .engine import AutoMap
from .probe import transfer_cost, value_of
from .rules import (
    THREAD_BOUND,
    Decision,
    Measurements,
    choose,
    environment_override,
    forced,
    gil_enabled,
)
from .warm import own_thread

if TYPE_CHECKING:
    from .._async import AsyncResults
    from ..processes import ProcessPool

log = logging.getLogger("concur.auto")


class _Route:
    """What AutoPool has learned about one function."""

    __slots__ = ("decision", "stats")

    def __init__(self) -> None:
        self.stats: Measurements | None = None
        self.decision: Decision | None = None


class AutoPool(_pool_base.PoolBase):
    """An Executor that decides, per function, where ``submit`` runs it.

    A function's first calls run on threads (nothing to pickle, and the
    thread's CPU clock measures them exactly); after ``LEARN_CALLS`` calls
    its Decision routes later calls inline, to threads or to processes, and
    keeps being updated as calls finish. ``decision`` is the latest Decision;
    ``decisions`` maps each function's name to its own. ``map`` and ``imap``
    decide per run, as ``concur.map`` does, on this pool's workers.
    """

    _kind = "thread"
    LEARN_CALLS = 3

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers must be an int >= 1, not {max_workers!r}")
        self._forced = environment_override("an AutoPool")
        self._max_workers = max_workers or cpu_count()
        self._workers_given = max_workers
        self._defaults = TaskOptions()
        self._threads = ThreadPool(THREAD_BOUND, thread_name_prefix="concur-AutoPool-thread")
        self._processes: ProcessPool | None = None
        self._routes: dict[Any, _Route] = {}
        self._lock = threading.Lock()
        self._clock = (time.perf_counter(), time.process_time())
        self.decision: Decision | None = None
        self.decisions: dict[str, Decision] = {}

    def _route(self, fn: Callable[..., Any]) -> _Route:
        key = getattr(fn, "__code__", None) or fn
        with self._lock:
            route = self._routes.get(key)
            if route is None:
                route = self._routes[key] = _Route()
                if self._forced is not None:
                    self._set(fn, route, forced(self._forced, "CONCUR_BACKEND"))
            return route

    def _set(self, fn: Callable[..., Any], route: _Route, decision: Decision) -> None:
        changed = route.decision is None or route.decision.backend != decision.backend
        route.decision = decision
        self.decision = decision
        self.decisions[_task.describe(fn)] = decision
        if changed:
            log.info("concur auto: %s → %s", _task.describe(fn), decision)

    def _submit_with(
        self,
        options: TaskOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[Any]:
        route = self._route(fn)
        call = functools.partial(fn, **kwargs) if kwargs else fn
        backend = route.decision.backend if route.decision else "thread"
        outer = _future.RunningFuture()
        if backend == "inline":
            outer.set_running_or_notify_cancel()
            outcomes, wall, cpu = _task.run_chunk(call, [args], False)
            self._learn(fn, route, args, outcomes[0], wall, cpu, "inline")
            _future.settle_outcome(outer, outcomes[0])
            return outer
        if backend == "process":
            pool: ThreadPool | ProcessPool = self._process_pool()
            blob = pool.prepare_fn(call)
        else:
            pool, blob = self._threads, None
        inner = pool.submit_chunk(call, [args], blob, options)
        # Cancelling the call stops it where it runs: a process worker is killed.
        outer._stop = inner.cancel

        def finished(done: Future[ChunkResult]) -> None:
            if outer.cancelled():
                return
            if done.cancelled():  # by outer.cancel(), or by the pool's own stop
                outer.cancel()
                return
            try:
                outcomes, wall, cpu = done.result()
            except BaseException as exc:
                _future.settle(outer, error=exc)
                return
            self._learn(fn, route, args, outcomes[0], wall, cpu, backend)
            _future.settle_outcome(outer, outcomes[0])

        outer.set_running_or_notify_cancel()
        inner.add_done_callback(finished)
        return outer

    def _learn(
        self,
        fn: Callable[..., Any],
        route: _Route,
        args: tuple[Any, ...],
        outcome: _task.Outcome,
        wall: float,
        cpu: float,
        backend: str,
    ) -> None:
        with self._lock:
            if self._forced is not None:
                return
            if backend == "thread":
                now = (time.perf_counter(), time.process_time())
                span, used = now[0] - self._clock[0], now[1] - self._clock[1]
                self._clock = now
                # The GIL is busy (as busy as the host lets this process be):
                # the work computes, and its threads wait for the GIL, not IO.
                # (/proc/loadavg is read only when the first test fails)
                if span > 0 and (used / span > 0.8 or used / span > 0.8 * host_share()):
                    wall = cpu
            old = route.stats or Measurements(
                cores=cpu_count(),
                gil=gil_enabled(),
                transfer=transfer_cost(args, value_of(outcome)),
            )
            weight = 1.0 / (old.items + 1) if old.items < 8 else 0.2
            route.stats = replace(
                old,
                items=old.items + 1,
                wall=(1 - weight) * old.wall + weight * wall,
                cpu=(1 - weight) * old.cpu + weight * cpu,
                warm=self._processes is not None,
            )
            items = route.stats.items
            # Re-decide often while learning, then every 16th call: cheap calls stay cheap.
            if items >= self.LEARN_CALLS and (items < 50 or items % 16 == 0):
                verdict = choose(route.stats, None)
                if verdict.backend == "thread":
                    verdict = replace(verdict, chunksize=1)
                self._set(fn, route, verdict)

    def _process_pool(self) -> ProcessPool:
        with self._lock:
            if self._processes is None:
                from ..processes import ProcessPool

                self._processes = ProcessPool(self._max_workers)
            return self._processes

    def submit_chunk(
        self,
        fn: Callable[..., Any],
        items: list[tuple[Any, ...]],
        fn_blob: bytes | None,
        options: TaskOptions,
    ) -> Future[ChunkResult]:
        return self._threads.submit_chunk(fn, items, fn_blob, options)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: Any = "auto",
        progress: bool = False,
    ) -> Iterator[Any]:
        """Decide for this run by measuring it, as ``concur.map`` does, on at
        most ``max_workers`` workers, in chunks of ``chunksize`` if it is given;
        ``progress=True`` draws ``concur.map``'s bar."""
        timeout = _pool_base.check_timeout(timeout)
        stream = AutoMap(
            fn,
            iterables,
            forced_backend=self._forced,
            timeout=timeout,
            workers=self._workers_given,
            chunksize=_fixed_chunksize(chunksize),
            pools=_OwnPools(self),
        )
        return _tracked(stream, self, iterables, progress)

    def imap(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: Any = "auto",
        return_exceptions: bool = False,
        max_inflight: int | None = None,
        progress: bool = False,
    ) -> Iterator[Any]:
        if max_inflight is not None and (not isinstance(max_inflight, int) or max_inflight < 1):
            raise ValueError(f"max_inflight must be an int >= 1, not {max_inflight!r}")
        stream = AutoMap(
            fn,
            iterables,
            ordered=ordered,
            return_exceptions=return_exceptions,
            forced_backend=self._forced,
            workers=self._workers_given,
            chunksize=_fixed_chunksize(chunksize),
            max_inflight=max_inflight,
            pools=_OwnPools(self),
        )
        return _tracked(stream, self, iterables, progress)

    def amap(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: Any = "auto",
        return_exceptions: bool = False,
        max_inflight: int | None = None,
        progress: bool = False,
    ) -> AsyncResults:
        """``imap``'s run (measured, decided, re-decided) driven by an event loop."""
        from .._async import AsyncResults

        tracked = self.imap(
            fn,
            *iterables,
            ordered=ordered,
            chunksize=chunksize,
            return_exceptions=return_exceptions,
            max_inflight=max_inflight,
        )
        assert isinstance(tracked, _TrackedMap)
        stream = tracked.stream
        bar = Bar(length_hint(iterables), stream.where) if progress else None
        return AsyncResults(stream, bar)

    def stats(self) -> _stats.PoolStats:
        """Its thread pool's and process pool's stats as one (calls run
        inline are in neither)."""
        parts = [self._threads.stats()]
        if self._processes is not None:
            parts.append(self._processes.stats())
        return _stats.PoolStats.combine("auto", parts)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._threads.shutdown(wait, cancel_futures=cancel_futures)
        if self._processes is not None:
            self._processes.shutdown(wait, cancel_futures=cancel_futures)

    def abort(self) -> None:
        self._threads.abort()
        if self._processes is not None:
            self._processes.abort()


def _fixed_chunksize(chunksize: Any) -> int | None:
    """None for "auto" (auto sizes chunks), else the size, checked as the pools check it."""
    return _pool_base.ChunkSizer(chunksize, 1, "thread").fixed


class _OwnPools:
    """The pools of ``AutoPool.map/imap`` runs: the AutoPool's own, which
    outlive each run (closing a run cancels its own chunks, nothing else)."""

    def __init__(self, pool: AutoPool) -> None:
        self.pool = pool

    def threads(self) -> ThreadPool:
        return self.pool._threads

    def watch(self, run: Callable[[], None]) -> Future[None]:
        return own_thread(run)  # not a task of the AutoPool's: not in its stats

    def processes(self, workers: int) -> ProcessPool:
        return self.pool._process_pool()

    def warm(self, workers: int) -> bool:
        return self.pool._processes is not None

    def release(self, abort: bool, settled: bool) -> None:
        pass


def _tracked(
    stream: AutoMap, pool: AutoPool, iterables: tuple[Iterable[Any], ...], progress: bool
) -> Iterator[Any]:
    """An AutoPool run, with ``concur.map``'s bar when ``progress`` is set."""
    tracked = _TrackedMap(stream, pool)
    return Shown(tracked, length_hint(iterables), stream.where) if progress else tracked


class _TrackedMap(Iterator[Any]):
    """An AutoMap whose decision also shows on the AutoPool that started it."""

    def __init__(self, stream: AutoMap, pool: AutoPool) -> None:
        self.stream = stream
        self.pool = pool

    @property
    def decision(self) -> Decision | None:
        return self.stream.decision

    def __iter__(self) -> _TrackedMap:
        return self

    def __next__(self) -> Any:
        try:
            return next(self.stream)
        finally:
            if self.stream.decision is not None:
                self.pool.decision = self.stream.decision

    def close(self) -> None:
        self.stream.close()
