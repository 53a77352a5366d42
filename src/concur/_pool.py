"""What both pools share: ``map`` and ``imap`` over chunks, and their sizing.

A pool subclass provides ``submit`` and ``_submit_chunk(fn, items)``; the
latter returns a future whose result is ``(outcomes, wall_s, cpu_s)``: one
outcome per item, in order, and the time the whole chunk took in the worker.
Items of a chunk run one after another in one worker; an item that raises
does not stop the rest of its chunk, so ``map`` can yield every result before
a failed item and then raise at the failed item's position, exactly where the
one-future-per-item standard library would.

``imap`` pulls from its input only as fast as results are consumed (at most
``2 × workers`` chunks in flight), so it works on endless iterators, and with
``chunksize="auto"`` it sizes chunks from the measured time per item: small
items are batched until a chunk takes about ``_CHUNK_TARGET_S``; long ones go
one at a time so the workers stay balanced.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Literal, TypeVar

from . import _task

T = TypeVar("T")
R = TypeVar("R")

ChunkSize = int | Literal["auto"]
ChunkResult = tuple[list[_task.Outcome], float, float]

# How long one chunk should run, so the cost of sending it (tens of µs to a
# thread, about 100 µs to a process) stays near 1% of the work.
_CHUNK_TARGET_S = {"thread": 0.002, "process": 0.01}
_MAX_CHUNK = 100_000


def check_timeout(timeout: float | None) -> float | None:
    """Reject negative and NaN timeouts with a message that says why."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be None or a number >= 0 seconds, not {timeout!r}")
    return float(timeout)


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
        self.target = _CHUNK_TARGET_S[kind]
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


class PoolBase(Executor):
    """Executor with chunked ``map`` and streaming ``imap``."""

    _kind = "thread"
    _max_workers: int

    def _submit_chunk(
        self, fn: Callable[..., Any], items: list[tuple[Any, ...]], fn_blob: bytes | None
    ) -> Future[ChunkResult]:
        raise NotImplementedError

    def _prepare_fn(self, fn: Callable[..., Any]) -> bytes | None:
        """Serialize the callable once per map/imap call (processes only)."""
        return None

    # -- map ---------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: ChunkSize = "auto",
    ) -> Iterator[R]:
        """Like ``Executor.map``: every item is submitted now, results come in order.

        ``chunksize="auto"`` (the default) sends about four chunks per worker;
        an int sends chunks of that size. The first failed item raises at its
        position, after every result before it was yielded. ``timeout`` counts
        from this call and raises ``TimeoutError`` when a result is late.
        """
        timeout = check_timeout(timeout)
        end_time = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables, strict=False))
        if chunksize == "auto":
            size = static_chunksize(len(items), self._max_workers)
        else:
            size = ChunkSizer(chunksize, self._max_workers, self._kind).next_size(None)
        fn_blob = self._prepare_fn(fn) if items else None
        futures = [
            self._submit_chunk(fn, items[start : start + size], fn_blob)
            for start in range(0, len(items), size)
        ]
        return _map_results(futures, end_time)

    # -- imap --------------------------------------------------------------

    def imap(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: ChunkSize = "auto",
        return_exceptions: bool = False,
        max_inflight: int | None = None,
    ) -> Iterator[R]:
        """Stream ``fn(*args)`` over the zipped iterables, lazily.

        Input is read only as results are consumed, with at most
        ``max_inflight`` chunks (default ``2 × max_workers``) submitted and
        not yet yielded, so an endless iterator is fine. ``ordered=False``
        yields results as they finish. With ``return_exceptions=True`` a
        failed item yields its exception instead of raising it.
        """
        sizer = ChunkSizer(chunksize, self._max_workers, self._kind)
        limit = max_inflight if max_inflight is not None else 2 * self._max_workers
        if limit < 1:
            raise ValueError(f"max_inflight must be >= 1, not {limit!r}")
        source: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
        remaining = _length_hint(iterables)
        return _Stream(self, fn, source, sizer, limit, ordered, return_exceptions, remaining)


def _length_hint(iterables: tuple[Iterable[Any], ...]) -> int | None:
    lengths = []
    for iterable in iterables:
        try:
            lengths.append(len(iterable))  # type: ignore[arg-type]
        except TypeError:
            return None
    return min(lengths) if lengths else None


def _chunk_result(future: Future[ChunkResult], end_time: float | None) -> ChunkResult:
    if end_time is None:
        return future.result()
    return future.result(max(0.0, end_time - time.monotonic()))


def _map_results(futures: list[Future[ChunkResult]], end_time: float | None) -> Iterator[Any]:
    pending = deque(futures)
    try:
        while pending:
            try:
                outcomes, _, _ = _chunk_result(pending[0], end_time)
            except FuturesTimeout:
                raise FuturesTimeout() from None
            pending.popleft()
            for outcome in outcomes:
                yield _task.resolve(outcome)
    finally:
        for future in pending:
            future.cancel()


class _Stream(Iterator[Any]):
    """The iterator ``imap`` returns: reads input, submits chunks, yields results."""

    def __init__(
        self,
        pool: PoolBase,
        fn: Callable[..., Any],
        source: Iterator[tuple[Any, ...]],
        sizer: ChunkSizer,
        limit: int,
        ordered: bool,
        return_exceptions: bool,
        remaining: int | None,
    ) -> None:
        self._pool = pool
        self._fn = fn
        self._fn_blob: bytes | None = None
        self._blob_ready = False
        self._source: Iterator[tuple[Any, ...]] | None = source
        self._sizer = sizer
        self._limit = limit
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._remaining = remaining
        self._inflight: deque[tuple[Future[ChunkResult], int]] = deque()
        self._ready: deque[_task.Outcome] = deque()

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> Any:
        while not self._ready:
            self._fill()
            if not self._inflight:
                self.close()
                raise StopIteration
            self._collect()
        status, value = self._ready.popleft()
        if status == _task.OK:
            return value
        exc = value if status == _task.RAISED else _task.unpack_exception(value)
        if self._return_exceptions:
            return exc
        self.close()
        raise exc

    def _fill(self) -> None:
        while self._source is not None and len(self._inflight) < self._limit:
            size = self._sizer.next_size(self._remaining)
            chunk = list(itertools.islice(self._source, size))
            if not chunk:
                self._source = None
                return
            if self._remaining is not None:
                self._remaining -= len(chunk)
            if not self._blob_ready:
                self._fn_blob = self._pool._prepare_fn(self._fn)
                self._blob_ready = True
            future = self._pool._submit_chunk(self._fn, chunk, self._fn_blob)
            self._inflight.append((future, len(chunk)))

    def _collect(self) -> None:
        if self._ordered:
            future, count = self._inflight.popleft()
            self._take(future, count)
            return
        done, _ = wait([f for f, _ in self._inflight], return_when=FIRST_COMPLETED)
        keep: deque[tuple[Future[ChunkResult], int]] = deque()
        for future, count in self._inflight:
            if future in done:
                self._take(future, count)
            else:
                keep.append((future, count))
        self._inflight = keep

    def _take(self, future: Future[ChunkResult], count: int) -> None:
        try:
            outcomes, wall, _ = future.result()
        except Exception as exc:
            # The whole chunk failed (its worker died, say): every item gets the error.
            if not self._return_exceptions:
                self.close()
                raise
            self._ready.extend((_task.RAISED, exc) for _ in range(count))
            return
        self._sizer.observe(count, wall)
        self._ready.extend(outcomes)

    def close(self) -> None:
        """Stop reading input and cancel chunks that have not started."""
        self._source = None
        for future, _ in self._inflight:
            future.cancel()
        self._inflight.clear()

    def __del__(self) -> None:
        self.close()
