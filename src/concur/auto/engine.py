"""Auto on the streaming engine: ``AutoMap`` is a ``Stream`` whose placement
probes the work, runs each chunk where the judge decided, and re-decides."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .. import _task
from .._pool import ChunkResult, TaskOptions
from .._stream import Chunk, Stream
from ..errors import SerializationError
from ..threads import ThreadPool
from .inline import Done, Watchdog, run_inline
from .judge import Judge
from .probe import Probe, note_run
from .ramp import Ramp
from .rules import LONG_RUN, Decision, environment_override, forced, items_per_chunk
from .warm import Pools, RunPools

if TYPE_CHECKING:
    pass


def _starred(fn: Callable[..., Any]) -> Callable[[tuple[Any, ...]], Any]:
    def call(args: tuple[Any, ...]) -> Any:
        return fn(*args)

    return call


class AutoMap(Stream):
    """The stream behind ``backend="auto"``: the engine, driven by an
    ``AutoPlacement`` that decides, runs and re-decides.

    ``decision`` is the current Decision; ``decisions`` every one in order.
    """

    placement: AutoPlacement

    def __init__(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        workers: int | None = None,
        forced_backend: str | None = None,
        options: TaskOptions | None = None,
        timeout: float | None = None,
        chunksize: int | None = None,
        max_inflight: int | None = None,
        pools: Pools | None = None,
    ) -> None:
        placement = AutoPlacement(
            fn, workers, forced_backend, options, chunksize, max_inflight, pools
        )
        super().__init__(
            iterables,
            placement,
            ordered=ordered,
            return_exceptions=return_exceptions,
            timeout=timeout,
        )
        # One iterable: items stay as they are, so inline calls are plain fn(x).
        placement.call = fn if self.cursor.single else _starred(fn)

    @property
    def decision(self) -> Decision | None:
        return self.placement.judge.decision

    @property
    def decisions(self) -> list[Decision]:
        return self.placement.judge.decisions

    def where(self) -> str:
        """Where the work runs, as a progress bar labels it: "measuring"
        until the first decision, then the backend and its workers."""
        d = self.decision
        return "measuring" if d is None else f"{d.backend} × {d.workers}"


class AutoPlacement:
    """Where auto runs each chunk: the probe first, then what the judge
    decided (inline here, threads or processes), re-decided after each chunk."""

    def __init__(
        self,
        fn: Callable[..., Any],
        workers: int | None,
        forced_backend: str | None,
        options: TaskOptions | None,
        chunksize: int | None,
        max_inflight: int | None,
        pools: Pools | None = None,
    ) -> None:
        self.fn = fn
        self.call: Callable[[Any], Any] = fn
        self._max_inflight = max_inflight
        self._options = options or TaskOptions()
        self.pools: Pools = pools or RunPools()
        self._fn_blob: bytes | None = None
        self._once: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
        self._watchdog = Watchdog(self.pools.watch)
        self.ramp: Ramp | None = None  # threads for work that waits on the outside world
        self.judge = Judge(workers, chunksize, forced_backend or environment_override("this run"))
        if self.judge.forced is not None:
            source = "backend=" if forced_backend else "CONCUR_BACKEND"
            self.judge.adopt(forced(self.judge.forced, source, workers))
        self.judge.warm = self.pools.warm(self.process_workers())

    def start(self, stream: Stream) -> None:
        if self.judge.decision is None:
            Probe(stream, self).run()

    def limit(self) -> int:
        d = self.judge.decision
        assert d is not None
        limit = 1
        if d.backend == "process":
            limit = 2 * d.workers
        elif d.backend == "thread":
            limit = d.workers + 1
            ramp = self._ramp_for(d.workers) if d.chunksize == 1 else None
            if ramp is not None:
                limit = ramp.level
        return limit if self._max_inflight is None else min(limit, self._max_inflight)

    def _ramp_for(self, workers: int) -> Ramp | None:
        """The ramp for threads that wait on the outside world (see ``ramp``),
        unless the caller fixed the worker count."""
        if not self.judge.outside or self.judge.workers is not None:
            return None
        if self.ramp is None:
            self.ramp = Ramp(workers)
        self.ramp.recap(workers)
        return self.ramp

    def chunk_size(self, stream: Stream) -> int | None:
        d = self.judge.decision
        assert d is not None
        if d.backend == "inline" and stream.inflight.pending(skip_tag="inline"):
            return None  # let pool work drain before running inline in this thread
        if d.chunksize:
            return d.chunksize
        if self.judge.stats is None:
            return 1
        return items_per_chunk(self.judge.stats, stream.left() or LONG_RUN, d.backend)

    def place(self, chunk: Chunk, stream: Stream) -> tuple[Future[ChunkResult], int, str]:
        d = self.judge.decision
        assert d is not None
        if d.backend == "inline":
            done, taken = self.run_inline(chunk, stream)
            _, wall, cpu = done.result()
            self._observe(taken, wall, cpu, "inline", stream)  # now: the next chunk may differ
            return done, taken, "inline"
        options = self._options.for_chunk(len(chunk))
        items = stream.cursor.as_args(chunk)
        if d.backend == "thread":
            if self.ramp is not None:
                self.ramp.started(time.perf_counter())
            future = self.thread_pool().submit_chunk(self.fn, items, None, options)
        else:
            processes = self.pools.processes(self.process_workers())
            if self._fn_blob is None:
                self._fn_blob = processes.prepare_fn(self.fn)  # raises: it cannot travel
                if stream.cursor.held_whole:
                    self._once = processes.copies_once()
            with self._once():
                future = processes.submit_chunk(self.fn, items, self._fn_blob, options)
        return future, len(chunk), d.backend

    def observe(self, count: int, wall: float, cpu: float, tag: str, stream: Stream) -> None:
        # Inline chunks were observed as they ran; the probe item was measured
        # by the probe (beside a spinner that contends for the GIL on purpose).
        if tag == "thread" and self.ramp is not None:
            self.ramp.completed(count, wall, time.perf_counter())
        if tag not in ("inline", "probe"):
            self._observe(count, wall, cpu, tag, stream)

    def _observe(self, count: int, wall: float, cpu: float, tag: str, stream: Stream) -> None:
        warm = self.pools.warm(self.process_workers())
        left, more = stream.left(), stream.cursor.has_input()
        self.judge.observe(count, wall, cpu, tag, left, more, warm)

    def callable_travels(self) -> bool:
        """Whether the function can be sent to a worker process (pickled here
        once, and kept for the processes if it can)."""
        if self._fn_blob is None:
            try:
                self._fn_blob = _task.serialize_callable(self.fn)
            except SerializationError:
                return False
        return True

    def run_inline(self, chunk: Chunk, stream: Stream) -> tuple[Done, int]:
        return run_inline(self.call, chunk, self._watchdog, stream.cursor)

    def thread_pool(self) -> ThreadPool:
        return self.pools.threads()

    def process_workers(self) -> int:
        d = self.judge.decision
        if d is not None and d.backend == "process":
            return d.workers
        return self.judge.workers or self.judge.cores

    def runs_here(self) -> bool:
        d = self.judge.decision
        return d is None or d.backend == "inline"  # the probe, or inline chunks

    def release(self, abort: bool, settled: bool) -> None:
        """The run ended: its pools are parked warm, or stopped (see ``warm``),
        and the record of what went to shared memory goes."""
        self._once = contextlib.nullcontext
        self._watchdog.stop(wait=not settled)  # its task runs on the thread pool
        self.pools.release(abort, settled)
        if settled:
            note_run(self.fn, self.judge)
