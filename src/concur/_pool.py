"""What both pools share: ``map`` and ``imap`` over chunks, and their sizing.

A pool subclass provides ``_submit_with(options, fn, args, kwargs)`` and
``submit_chunk(fn, items, fn_blob, options)``; the latter returns a future
whose result is ``(outcomes, wall_s, cpu_s)``: one outcome per item, in
order, and the time the whole chunk took in the worker.
Items of a chunk run one after another in one worker; an item that raises
does not stop the rest of its chunk, so ``map`` can yield every result before
a failed item and then raise at the failed item's position, exactly where the
one-future-per-item standard library would.

``imap`` pulls from its input only as fast as results are consumed (at most
``2 × workers`` chunks in flight), so it works on endless iterators, and with
``chunksize="auto"`` it sizes chunks from the measured time per item: small
items are batched until a chunk takes about ``CHUNK_TARGET_S``; long ones go
one at a time so the workers stay balanced.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from . import _cputime, _task
from ._exit import dying_of_interrupt, exiting, ignoring_ctrl_c
from ._progress import Bar, Shown
from ._stream import PoolPlacement, Stream, cancel_all, length_hint
from .errors import PoolClosed, PoolInherited

if TYPE_CHECKING:
    from ._async import AsyncResults

T = TypeVar("T")
R = TypeVar("R")

ChunkSize = int | Literal["auto"]
ChunkResult = tuple[list[_task.Outcome], float, float]

# How long one chunk should run, so the cost of sending it (tens of µs to a
# thread, about 100 µs to a process) stays near 1% of the work; inline chunks
# (auto) are how often auto looks at the work again. A Dask task costs about
# a millisecond through the scheduler, so its chunks run for a tenth of a second.
CHUNK_TARGET_S = {"thread": 0.002, "process": 0.01, "inline": 0.005, "dask": 0.1}
_MAX_CHUNK = 100_000


def check_timeout(timeout: float | None) -> float | None:
    """Reject negative and NaN timeouts with a message that says why."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be None or a number >= 0 seconds, not {timeout!r}")
    return float(timeout)


@dataclass(frozen=True)
class TaskOptions:
    """Per-task settings: a time limit (seconds, from when the task starts
    running) and how many times a task whose worker crashed is run again."""

    timeout: float | None = None
    retries: int = 0

    def __post_init__(self) -> None:
        check_timeout(self.timeout)
        if self.timeout == 0:
            raise ValueError("timeout must be > 0 seconds (or None for no limit)")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {self.retries!r}")

    def for_chunk(self, items: int) -> TaskOptions:
        """A chunk of ``items`` gets each item's time limit, added up."""
        if self.timeout is None or items == 1:
            return self
        return TaskOptions(self.timeout * items, self.retries)


def check_open(kind: str, owner: int, broken: BaseException | None, closed: bool) -> None:
    """Raise why a pool cannot take a task now, if it cannot: it belongs to
    another process (inherited through fork), it is broken, the interpreter
    is exiting (a plain RuntimeError, as the standard library raises), or it
    was shut down (PoolClosed)."""
    if os.getpid() != owner:
        raise PoolInherited(kind, owner)
    if broken is not None:
        raise broken
    if exiting():
        # Exactly the standard library's error: this one is printed from
        # atexit handlers, where people know it by its text.
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")
    if closed:
        raise PoolClosed("cannot schedule new futures after shutdown")


def static_chunksize(n: int, workers: int) -> int:
    """About four chunks per worker: small work is batched, big work balanced."""
    return max(1, n // (workers * 4))


class ChunkSizer:
    """Picks the next chunk size from the time per item measured so far."""

    def __init__(self, chunksize: ChunkSize, workers: int, kind: str) -> None:
        if chunksize != "auto" and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f'chunksize must be an int >= 1 or "auto", not {chunksize!r}')
        self.fixed = None if chunksize == "auto" else int(chunksize)
        self.workers = workers
        self.target = CHUNK_TARGET_S[kind]
        self.per_item: float | None = None

    def observe(self, items: int, wall: float) -> None:
        sample = wall / max(items, 1)
        # A moving average reacts to work that changes without chasing noise.
        self.per_item = sample if self.per_item is None else 0.7 * self.per_item + 0.3 * sample

    def next_size(self, remaining: int | None) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            return 1
        size = int(self.target / max(self.per_item, 1e-9))
        if remaining is not None:
            size = min(size, max(1, remaining // (self.workers * 2)))
        return max(1, min(size, _MAX_CHUNK))


class Front:
    """``map``, ``imap``, ``arun`` and ``amap`` with a pool's task options:
    its own (``PoolBase``) or others (``PoolView``, from ``options``)."""

    def _target(self) -> tuple[PoolBase, TaskOptions]:
        """The pool that runs the work, and the task options it runs it with."""
        raise NotImplementedError

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: ChunkSize = "auto",
        progress: bool = False,
    ) -> Iterator[R]:
        """Like ``Executor.map``: every item is submitted now, results come in order.

        ``chunksize="auto"`` (the default) sends about four chunks per worker;
        an int sends chunks of that size. The first failed item raises at its
        position, after every result before it was yielded. ``timeout`` counts
        from this call and raises ``TimeoutError`` when a result is late.
        ``progress=True`` draws a bar as results are taken, as ``concur.map``
        does: on a terminal or in a notebook, nowhere else.
        """
        pool, options = self._target()
        return pool._map(options, fn, iterables, timeout, chunksize, progress)

    def imap(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: ChunkSize = "auto",
        return_exceptions: bool = False,
        max_inflight: int | None = None,
        progress: bool = False,
    ) -> Iterator[R]:
        """Stream ``fn(*args)`` over the zipped iterables, lazily.

        Input is read only as results are consumed, with at most
        ``max_inflight`` chunks (default ``2 × max_workers``) submitted and
        not yet yielded, so an endless iterator is fine. ``ordered=False``
        yields results as they finish. With ``return_exceptions=True`` a
        failed item yields its exception instead of raising it.
        ``progress=True`` draws a bar as ``map``'s: done of the total when
        every iterable has a ``len()``, a count when one does not.
        """
        pool, options = self._target()
        results = pool._imap(
            options, fn, iterables, ordered, chunksize, return_exceptions, max_inflight
        )
        return _shown(pool, results, length_hint(iterables)) if progress else results

    async def arun(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """``await pool.arun(fn, *args)``: ``submit(...).result()`` without
        blocking the event loop (asyncio or trio; docs/async.md). Cancelling
        the awaiting task stops the call where the pool can (a process
        worker is killed); a thread runs on and its result is dropped."""
        pool, options = self._target()
        return await pool._arun(options, fn, args, kwargs)

    def amap(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: ChunkSize = "auto",
        return_exceptions: bool = False,
        max_inflight: int | None = None,
        progress: bool = False,
    ) -> AsyncResults:
        """``async for result in pool.amap(fn, items)``: ``imap`` on an event loop,
        with the same options (``progress`` too); cancelling the iterating
        task stops the chunks in flight (see ``arun``)."""
        from ._async import AsyncResults

        pool, options = self._target()
        stream = pool._imap(
            options, fn, iterables, ordered, chunksize, return_exceptions, max_inflight
        )
        assert isinstance(stream, Stream)
        return AsyncResults(stream, Bar(length_hint(iterables), _label(pool)) if progress else None)


class PoolBase(Front, Executor):
    """Executor with per-task options, chunked ``map`` and streaming ``imap``
    (``Front`` holds the public ``map``, ``imap``, ``arun`` and ``amap``).

    The streaming engine (``_stream``, ``auto``) places work on a pool with
    three methods: ``prepare_fn(fn)`` (the function's bytes for a process
    pool, once per run; None where nothing is pickled), ``submit_chunk(fn,
    items, fn_blob, options)`` (a future of ``(outcomes, wall_s, cpu_s)``)
    and ``abort()`` (stop now); auto's warm pools ask ``accepting()``
    before reusing one.
    """

    _kind = "thread"
    _max_workers: int
    _defaults: TaskOptions

    def _submit_with(
        self,
        options: TaskOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[Any]:
        raise NotImplementedError

    def submit_chunk(
        self,
        fn: Callable[..., Any],
        items: list[tuple[Any, ...]],
        fn_blob: bytes | None,
        options: TaskOptions,
    ) -> Future[ChunkResult]:
        raise NotImplementedError

    def abort(self) -> None:
        """Stop now: cancel queued tasks, stop running ones where possible."""
        raise NotImplementedError

    def _check_open(self) -> None:
        """Raise if the pool takes no more work (closed, broken, inherited)."""

    def accepting(self) -> bool:
        """Whether ``submit`` would take work now (not shut down, broken or
        inherited through a fork): what a holder of an idle pool asks
        before reusing it."""
        try:
            self._check_open()
        except Exception:
            return False
        return True

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return self._submit_with(self._defaults, fn, args, kwargs)

    def options(self, *, timeout: float | None = None, retries: int | None = None) -> PoolView:
        """This pool with other per-task settings, for ``submit``, ``map`` and ``imap``::

            pool.options(timeout=5).submit(fetch, url)

        ``timeout`` (seconds) counts from when a task starts running;
        ``retries`` reruns a task whose worker crashed, on a fresh worker.
        Unset values keep the pool's own.
        """
        current = self._defaults
        return PoolView(
            self,
            TaskOptions(
                current.timeout if timeout is None else timeout,
                current.retries if retries is None else retries,
            ),
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # One Ctrl-C stops everything: no waiting for the queue to drain.
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            with ignoring_ctrl_c():
                self.abort()
        else:
            self.shutdown(wait=True)

    def _exit_hook(self) -> None:
        if dying_of_interrupt():
            with ignoring_ctrl_c():
                self.abort()
            return
        try:
            self.shutdown(wait=True)
        except KeyboardInterrupt:
            # Ctrl-C while the ending program waits for its pools' work:
            # stop that work now, quietly; the program is ending either way.
            with ignoring_ctrl_c():
                self.abort()

    def prepare_fn(self, fn: Callable[..., Any]) -> bytes | None:
        """Serialize the callable once per map/imap call (processes only)."""
        return None

    def copies_once(self) -> Callable[[], contextlib.AbstractContextManager[None]]:
        """For one ``map`` or ``imap`` call over input held whole (see
        ``_shm.Placement``): what to enter around each of its submissions,
        where a process pool writes a large buffer the call sends to many
        tasks once."""
        return contextlib.nullcontext

    def _chunks_allowed(self, options: TaskOptions) -> bool:
        """Whether ``chunksize="auto"`` may batch items. Items with a time
        limit go one by one, so each gets its own."""
        return options.timeout is None

    # -- behind Front's map, imap, arun and amap ------------------------------

    def _target(self) -> tuple[PoolBase, TaskOptions]:
        return self, self._defaults

    def _map(
        self,
        options: TaskOptions,
        fn: Callable[..., R],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: ChunkSize,
        progress: bool = False,
    ) -> Iterator[R]:
        timeout = check_timeout(timeout)
        end_time = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables, strict=False))
        if chunksize == "auto":
            size = (
                static_chunksize(len(items), self._max_workers)
                if self._chunks_allowed(options)
                else 1
            )
        else:
            size = ChunkSizer(chunksize, self._max_workers, self._kind).next_size(None)
        fn_blob = self.prepare_fn(fn) if items else None
        futures = []
        with self.copies_once()():
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                future = self.submit_chunk(fn, chunk, fn_blob, options.for_chunk(len(chunk)))
                futures.append((future, start))
        results = _map_results(futures, end_time)
        return _shown(self, results, len(items)) if progress else results

    async def _arun(
        self,
        options: TaskOptions,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        from ._async import outcome

        return await outcome(self._submit_with(options, fn, args, kwargs))

    def _imap(
        self,
        options: TaskOptions,
        fn: Callable[..., R],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        chunksize: ChunkSize,
        return_exceptions: bool,
        max_inflight: int | None,
    ) -> Iterator[R]:
        if chunksize == "auto" and not self._chunks_allowed(options):
            chunksize = 1
        sizer = ChunkSizer(chunksize, self._max_workers, self._kind)
        limit = max_inflight if max_inflight is not None else 2 * self._max_workers
        if limit < 1:
            raise ValueError(f"max_inflight must be >= 1, not {limit!r}")
        placement = PoolPlacement(self, options, fn, sizer, limit, self._kind)
        return Stream(iterables, placement, ordered=ordered, return_exceptions=return_exceptions)


class PoolView(Front):
    """A pool seen with other per-task options (see ``PoolBase.options``)."""

    def __init__(self, pool: PoolBase, options: TaskOptions) -> None:
        self.pool = pool
        self.task_options = options

    def _target(self) -> tuple[PoolBase, TaskOptions]:
        return self.pool, self.task_options

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return self.pool._submit_with(self.task_options, fn, args, kwargs)


def _label(pool: PoolBase) -> Callable[[], str]:
    """What a pool's progress bar says runs the work: its kind and size."""
    where = f"{pool._kind} × {pool._max_workers}"
    return lambda: where


def _shown(pool: PoolBase, results: Iterator[R], total: int | None) -> Iterator[R]:
    """``results`` with a bar drawn as they come (``_progress``: on a terminal
    or in a notebook)."""
    return Shown(results, total, _label(pool))


def _chunk_result(future: Future[ChunkResult], end_time: float | None) -> ChunkResult:
    if end_time is None:
        return future.result()
    return future.result(max(0.0, end_time - time.monotonic()))


def _map_results(
    futures: list[tuple[Future[ChunkResult], int]], end_time: float | None
) -> Iterator[Any]:
    """Yield each chunk's values in order, letting go of each as it is yielded
    (a result the caller dropped is freed, as with the standard library).
    Each chunk comes with the place of its first item in the input."""
    pending = deque(futures)
    del futures
    interrupted = False
    try:
        while pending:
            future, first = pending[0]
            try:
                with _cputime.streaming():
                    outcomes, wall, cpu = _chunk_result(future, end_time)
            except KeyboardInterrupt:
                interrupted = True
                raise
            except Exception as error:
                exc = _task.renumbered(error, first)
                if exc is error:
                    raise
                raise exc from error.__cause__
            pending.popleft()
            _cputime.delegate(wall, cpu)  # computed for this thread's call (auto weighs it)
            outcomes.reverse()
            while outcomes:
                yield _task.resolve(outcomes.pop())
    finally:
        with ignoring_ctrl_c() if interrupted else contextlib.nullcontext():
            cancel_all([f for f, _ in pending], running_too=interrupted)
