"""The streaming engine's shared parts: the input, the chunks in flight, and
``imap`` on a pool.

    Cursor      the input: a list, tuple or range is sliced (a chunk is one
                copy), anything else is read with islice; items a chunk gave
                back come first; it counts what is left when it can
    InFlight    the chunks submitted and not yet collected, each with its
                item count and a tag: collected in order, or as they finish,
                within an optional time limit; cancelled together
    PoolStream  ``pool.imap``: a Cursor and an InFlight driving one pool

``concur.map``/``imap`` (``auto.AutoMap``) drive the same Cursor and InFlight
and decide, between chunks, where the next one runs. A failed item's outcome
becomes what the stream yields through ``deliver`` in both.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any

from . import _task
from ._exit import ignoring_ctrl_c

if TYPE_CHECKING:
    from ._pool import ChunkResult, ChunkSizer, PoolBase, TaskOptions

Entry = tuple["Future[ChunkResult]", int, str]  # a chunk's future, its items, its tag


def length_hint(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many items zip(*iterables) yields, if every iterable has a length."""
    lengths = []
    for iterable in iterables:
        try:
            lengths.append(len(iterable))  # type: ignore[arg-type]
        except TypeError:
            return None
    return min(lengths) if lengths else None


def cancel_all(futures: Iterable[Future[Any]], running_too: bool) -> None:
    """Cancel futures that have not started; with ``running_too``, stop running ones.

    Leaving a loop early (break, an exception) cancels only the queued work, as
    the standard library does; Ctrl-C stops the running work too.
    """
    for future in futures:
        if running_too or not future.running():
            future.cancel()


def deliver(outcome: _task.Outcome, return_exceptions: bool, close: Callable[[], None]) -> Any:
    """What a stream yields for one item's outcome: its value, or its
    exception, returned with ``return_exceptions``, else raised once
    ``close()`` has stopped the rest."""
    exc = _task.outcome_error(outcome)
    if exc is None:
        return outcome[1]
    if return_exceptions:
        return exc
    close()
    raise exc


class Cursor:
    """Where the next items come from. With one iterable an item is that
    iterable's element; with several, the tuple ``zip`` makes."""

    def __init__(self, iterables: tuple[Iterable[Any], ...]) -> None:
        self.single = len(iterables) == 1
        self._seq: Any = None
        self._pos = 0
        # Exactly these types: a subclass may define its own iteration.
        if self.single and type(iterables[0]) in (list, tuple, range):
            self._seq = iterables[0]
        self._source: Iterator[Any] | None = None
        if self._seq is None:
            self._source = iter(iterables[0]) if self.single else zip(*iterables, strict=False)
        self._pushed: list[Any] = []  # items given back, read before the rest
        self.remaining = length_hint(iterables)  # items not taken, when known

    def has_input(self) -> bool:
        return bool(self._pushed) or self._source is not None or self._seq is not None

    def take(self, count: int) -> list[Any]:
        """The next ``count`` items (fewer at the end): given-back ones first."""
        chunk, self._pushed = self._pushed[:count], self._pushed[count:]
        if len(chunk) < count and self._seq is not None:
            part = self._seq[self._pos : self._pos + count - len(chunk)]
            self._pos += len(part)
            if self._pos >= len(self._seq):
                self._seq = None
            if chunk:
                chunk.extend(part)
            else:
                chunk = part if isinstance(part, list) else list(part)
        if len(chunk) < count and self._source is not None:
            more = list(itertools.islice(self._source, count - len(chunk)))
            if len(chunk) + len(more) < count:
                self._source = None
            chunk.extend(more)
        if self.remaining is not None:
            self.remaining -= len(chunk)
        return chunk

    def push_back(self, items: list[Any]) -> None:
        """Items taken but not run: they come out again first."""
        if items:
            self._pushed[:0] = items
            if self.remaining is not None:
                self.remaining += len(items)

    def as_args(self, chunk: list[Any]) -> list[tuple[Any, ...]]:
        """A chunk as argument tuples, as workers call ``fn(*args)``."""
        return [(x,) for x in chunk] if self.single else chunk

    def close(self) -> None:
        """Read nothing more."""
        self._source = None
        self._seq = None
        self._pushed = []


class InFlight:
    """Submitted chunks, oldest first."""

    def __init__(self) -> None:
        self.entries: deque[Entry] = deque()

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, future: Future[ChunkResult], count: int, tag: str = "") -> None:
        self.entries.append((future, count, tag))

    def pending(self, skip_tag: str | None = None) -> int:
        """Chunks not finished (not counting those tagged ``skip_tag``)."""
        return sum(1 for f, _, tag in self.entries if not f.done() and tag != skip_tag)

    def running_items(self) -> int:
        return sum(n for f, n, _ in self.entries if not f.done())

    def collect(self, ordered: bool, timeout: float | None = None) -> list[Entry] | None:
        """Take finished chunks: the oldest (ordered), else all that are done
        once one is. None when ``timeout`` passes first."""
        if ordered:
            # Waited for while still listed, so a Ctrl-C meanwhile cancels it too.
            future = self.entries[0][0]
            wait([future], timeout=timeout)
            if not future.done():
                return None
            return [self.entries.popleft()]
        done, _ = wait(
            [f for f, _, _ in self.entries], timeout=timeout, return_when=FIRST_COMPLETED
        )
        if not done:
            return None
        taken = [entry for entry in self.entries if entry[0] in done]
        self.entries = deque(entry for entry in self.entries if entry[0] not in done)
        return taken

    def all_done(self) -> bool:
        return all(f.done() for f, _, _ in self.entries)

    def cancel(self, running_too: bool) -> None:
        cancel_all([f for f, _, _ in self.entries], running_too)
        self.entries.clear()


class PoolStream(Iterator[Any]):
    """The iterator ``pool.imap`` returns: reads input, submits chunks, yields results."""

    def __init__(
        self,
        pool: PoolBase,
        options: TaskOptions,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        sizer: ChunkSizer,
        limit: int,
        ordered: bool,
        return_exceptions: bool,
    ) -> None:
        self._cursor = Cursor(iterables)  # first: input that is not iterable raises here
        self._pool = pool
        self._options = options
        self._fn = fn
        self._fn_blob: bytes | None = None
        self._blob_ready = False
        self._sizer = sizer
        self._limit = limit
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._inflight = InFlight()
        self._ready: deque[_task.Outcome] = deque()

    def __iter__(self) -> PoolStream:
        return self

    def __next__(self) -> Any:
        while not self._ready:
            self._fill()
            if not self._inflight:
                self.close()
                raise StopIteration
            try:
                for future, count, _ in self._inflight.collect(self._ordered) or ():
                    self._take(future, count)
            except KeyboardInterrupt:
                with ignoring_ctrl_c():
                    self.close(running_too=True)
                raise
        return deliver(self._ready.popleft(), self._return_exceptions, self.close)

    def _fill(self) -> None:
        cursor = self._cursor
        while cursor.has_input() and len(self._inflight) < self._limit:
            chunk = cursor.take(self._sizer.next_size(cursor.remaining))
            if not chunk:
                return
            if not self._blob_ready:
                self._fn_blob = self._pool.prepare_fn(self._fn)
                self._blob_ready = True
            options = self._options.for_chunk(len(chunk))
            args = cursor.as_args(chunk)
            future = self._pool.submit_chunk(self._fn, args, self._fn_blob, options)
            self._inflight.add(future, len(chunk))

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

    def close(self, running_too: bool = False) -> None:
        """Stop reading input and cancel chunks that have not started."""
        self._cursor.close()
        self._inflight.cancel(running_too)

    def __del__(self) -> None:
        if hasattr(self, "_inflight"):  # not when the input was refused in __init__
            self.close()
