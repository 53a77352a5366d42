"""The streaming engine's shared parts: the input, the chunks in flight, and
``imap`` on a pool.

    Cursor      the input: a list, tuple or range is sliced (a chunk is one
                copy), anything else is read with islice; items a chunk gave
                back come first; it counts what is left when it can
    InFlight    the chunks submitted and not yet collected, each with its
                item count and a tag: collected in order, or as they finish,
                within an optional time limit; cancelled together
    Stream      the engine: a Cursor and an InFlight, results in order or
                as they finish, within a time limit; it asks a Placement
                where each chunk runs and tells it what each one cost
    Placement   the interface the engine drives: PoolPlacement (one pool,
                for ``pool.imap``) and ``auto.AutoMap`` (inline, threads or
                processes, chosen between chunks, for ``concur.map``/``imap``)

A failed item's outcome becomes what the stream yields through ``deliver``.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import TYPE_CHECKING, Any, Protocol

from . import _cputime, _task
from ._exit import ignoring_ctrl_c

if TYPE_CHECKING:
    from ._pool import ChunkResult, ChunkSizer, PoolBase, TaskOptions

# A chunk's future, its items, its tag, and its first item's place in the input.
Entry = tuple["Future[ChunkResult]", int, str, int]
Chunk = Sequence[Any]  # items taken together: a list, or a slice of a tuple or range input


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
        # Every item exists before the first is sent: none can be refilled.
        self.held_whole = all(type(it) in (list, tuple) for it in iterables)
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
        self.position = 0  # the place in the input of the item read next

    def has_input(self) -> bool:
        return bool(self._pushed) or self._source is not None or self._seq is not None

    def take(self, count: int) -> Chunk:
        """The next ``count`` items (fewer at the end): given-back ones first.
        A slice of a list, tuple or range input is the chunk as it is: no
        copy per item (its iterator can be moved to its end, see ``inline``)."""
        given, self._pushed = self._pushed[:count], self._pushed[count:]
        chunk: Chunk = given
        if len(given) < count and self._seq is not None:
            part: Chunk = self._seq[self._pos : self._pos + count - len(given)]
            self._pos += len(part)
            if self._pos >= len(self._seq):
                self._seq = None
            if given:
                given.extend(part)
            else:
                chunk = part
        elif len(given) < count and self._source is not None:
            more = list(itertools.islice(self._source, count - len(given)))
            if len(given) + len(more) < count:
                self._source = None
            given.extend(more)
        if self.remaining is not None:
            self.remaining -= len(chunk)
        self.position += len(chunk)
        return chunk

    def push_back(self, items: Chunk) -> None:
        """Items taken but not run: they come out again first."""
        if items:
            self._pushed[:0] = items
            self.position -= len(items)
            if self.remaining is not None:
                self.remaining += len(items)

    def as_args(self, chunk: Chunk) -> list[tuple[Any, ...]]:
        """A chunk as argument tuples, as workers call ``fn(*args)``."""
        return [(x,) for x in chunk] if self.single else list(chunk)

    def close(self) -> None:
        """Read nothing more."""
        self._source = None
        self._seq = None
        self._pushed = []


class InFlight:
    """Submitted chunks, oldest first."""

    def __init__(self, cursor: Cursor) -> None:
        self.entries: deque[Entry] = deque()
        self._cursor = cursor

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, future: Future[ChunkResult], count: int, tag: str = "") -> None:
        """A chunk of the last ``count`` items taken from the cursor (and not given back)."""
        self.entries.append((future, count, tag, self._cursor.position - count))

    def pending(self, skip_tag: str | None = None) -> int:
        """Chunks not finished (not counting those tagged ``skip_tag``)."""
        return sum(1 for f, _, tag, _ in self.entries if not f.done() and tag != skip_tag)

    def running_items(self) -> int:
        return sum(n for f, n, _, _ in self.entries if not f.done())

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
            [f for f, _, _, _ in self.entries], timeout=timeout, return_when=FIRST_COMPLETED
        )
        if not done:
            return None
        taken = [entry for entry in self.entries if entry[0] in done]
        self.entries = deque(entry for entry in self.entries if entry[0] not in done)
        return taken

    def all_done(self) -> bool:
        return all(f.done() for f, _, _, _ in self.entries)

    def cancel(self, running_too: bool) -> None:
        cancel_all([f for f, _, _, _ in self.entries], running_too)
        self.entries.clear()


class Values(list[Any]):
    """Results of a chunk that all succeeded: plain values, not outcomes."""


class Placement(Protocol):
    """Where a stream's chunks run: what the engine asks, between chunks.

    ``PoolPlacement`` is one pool's; ``auto.AutoMap`` decides per chunk
    between inline, threads and processes.
    """

    def start(self, stream: Stream) -> None:
        """Once, before the first chunk (auto runs its probe here)."""

    def limit(self) -> int:
        """How many chunks may be in flight, collected or not."""
        ...

    def chunk_size(self, stream: Stream) -> int | None:
        """Items in the next chunk; None to place nothing more this round."""
        ...

    def place(self, chunk: Chunk, stream: Stream) -> tuple[Future[ChunkResult], int, str]:
        """Run ``chunk``: its future, the items it took, a tag for ``observe``
        ("inline" where it ran here; elsewhere, its CPU time counts as the
        calling thread's, ``_cputime.delegate``). A future that is already
        done (the chunk ran here) ends the round."""
        ...

    def observe(self, count: int, wall: float, cpu: float, tag: str, stream: Stream) -> None:
        """What a collected chunk of ``count`` items cost where it ran."""

    def release(self, abort: bool, settled: bool) -> None:
        """The stream ended (``abort``: by Ctrl-C); ``settled``: every item
        was delivered and nothing runs."""

    def runs_here(self) -> bool:
        """Whether the next step may run work in the caller's thread (auto's
        probe or an inline chunk), not only hand it to a pool."""
        ...


class _Block:
    __slots__ = ("items", "raw")

    def __init__(self, items: list[Any], raw: bool) -> None:
        self.items = items  # plain values (raw) or outcomes
        self.raw = raw


class Stream(Iterator[Any]):
    """The streaming engine: reads the input, keeps work in flight within the
    placement's limit, collects chunks in order or as they finish (within an
    optional time limit), and yields results; the placement decides where
    each chunk runs. Leaving early (``close``) cancels what has not started;
    Ctrl-C stops what runs too."""

    def __init__(
        self,
        iterables: tuple[Iterable[Any], ...],
        placement: Placement,
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.cursor = Cursor(iterables)  # first: input that is not iterable raises here
        self.inflight = InFlight(self.cursor)
        self.placement = placement
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._end_time = None if timeout is None else time.monotonic() + timeout
        self._blocks: deque[_Block] = deque()
        self._index = 0
        self._started = False
        self._ended = False  # every item delivered

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        while not self._ready():
            self._advance()
        block = self._blocks[0]
        item = block.items[self._index]
        self._index += 1
        return item if block.raw else self._resolve(item)

    def _ready(self) -> bool:
        """Whether a result can be yielded now (finished blocks are dropped)."""
        while self._blocks and self._index >= len(self._blocks[0].items):
            self._blocks.popleft()
            self._index = 0
        return bool(self._blocks)

    def prepare(self) -> list[Future[ChunkResult]]:
        """Make the next step ready without waiting for a chunk: start the
        placement, place what fits, collect what has finished. Returns the
        futures the next result waits for; none when ``next()`` would not
        wait (a result is ready, or the stream is over). The async front
        waits for these on its event loop, then calls ``next()``."""
        try:
            while not self._ready():
                if not self._started:
                    self._started = True
                    self.placement.start(self)
                    continue
                self._fill()
                if not self.inflight:
                    return []
                entries = self.inflight.entries
                futures = [entries[0][0]] if self._ordered else [e[0] for e in entries]
                if not any(future.done() for future in futures):
                    return futures
                self._collect()
            return []
        except KeyboardInterrupt:
            with ignoring_ctrl_c():
                self.close(abort=True)
            raise

    def to_list(self, out: list[Any] | None = None) -> list[Any]:
        """Every result, in order, appended to ``out`` (a new list by default):
        ``list(self)`` without a call per item."""
        out = [] if out is None else out
        while True:
            while self._blocks:
                block = self._blocks.popleft()
                rest = block.items[self._index :] if self._index else block.items
                self._index = 0
                if block.raw:
                    out.extend(rest)
                else:
                    out.extend(self._resolve(item) for item in rest)
            try:
                self._advance()
            except StopIteration:
                return out

    def left(self) -> int | None:
        """Items not yet finished: known, or None for input of unknown length."""
        running = self.inflight.running_items()
        if not self.cursor.has_input():
            return running
        remaining = self.cursor.remaining
        return None if remaining is None else remaining + running

    def _advance(self) -> None:
        """Get at least one more block ready, or raise StopIteration."""
        with _cputime.streaming():
            self._advance_here()

    def _advance_here(self) -> None:
        try:
            if not self._started:
                self._started = True
                self.placement.start(self)
                return
            self._fill()
            if not self.inflight:
                self._ended = True
                self.close()
                raise StopIteration
            self._collect()
        except KeyboardInterrupt:
            with ignoring_ctrl_c():
                self.close(abort=True)
            raise

    def _fill(self) -> None:
        cursor, placement = self.cursor, self.placement
        while cursor.has_input() and len(self.inflight) < placement.limit():
            size = placement.chunk_size(self)
            if size is None:
                return
            chunk = cursor.take(size)
            if not chunk:
                return
            future, count, tag = placement.place(chunk, self)
            self.inflight.add(future, count, tag)
            if future.done():
                return  # it ran here: its results go out before more is read

    def _collect(self) -> None:
        limit = None if self._end_time is None else max(0.0, self._end_time - time.monotonic())
        taken = self.inflight.collect(self._ordered, limit)
        if taken is None:
            self.close()
            raise FuturesTimeout()
        for future, count, tag, first in taken:
            self._take(future, count, tag, first)

    def _take(self, future: Future[ChunkResult], count: int, tag: str, first: int) -> None:
        try:
            outcomes, wall, cpu = future.result()
        except Exception as error:  # the whole chunk failed: its worker died, a time limit
            exc = _task.renumbered(error, first)
            if not self._return_exceptions:
                self.close()
                if exc is error:
                    raise
                raise exc from error.__cause__
            self._blocks.append(_Block([(_task.RAISED, exc)] * count, raw=False))
            return
        if isinstance(outcomes, Values):
            self._blocks.append(_Block(outcomes, raw=True))
        elif all(status == _task.OK for status, _ in outcomes):
            self._blocks.append(_Block([value for _, value in outcomes], raw=True))
        else:
            self._blocks.append(_Block(outcomes, raw=False))
        if tag != "inline":  # computed elsewhere for this thread (auto weighs it)
            _cputime.delegate(wall, cpu)
        self.placement.observe(count, wall, cpu, tag, self)

    def _resolve(self, outcome: _task.Outcome) -> Any:
        return deliver(outcome, self._return_exceptions, self.close)

    def close(self, abort: bool = False) -> None:
        """Stop reading input, cancel what has not started (``abort``: what
        runs too), and release the placement: settled only when every item
        was delivered (a run that failed, timed out or was left early is not)."""
        self.cursor.close()
        settled = self._ended and self.inflight.all_done()
        self.inflight.cancel(running_too=abort)
        self.placement.release(abort, settled)

    def __del__(self) -> None:
        if hasattr(self, "placement"):  # not when the input was refused in __init__
            with contextlib.suppress(Exception):
                self.close()


class PoolPlacement:
    """``pool.imap``'s placement: every chunk goes to one pool, sized by a
    ChunkSizer from the time per item measured so far."""

    def __init__(
        self,
        pool: PoolBase,
        options: TaskOptions,
        fn: Callable[..., Any],
        sizer: ChunkSizer,
        limit: int,
        kind: str,
    ) -> None:
        self._tag = kind  # "process": its chunks compute in other processes
        self._pool = pool
        self._options = options
        self._fn = fn
        self._fn_blob: bytes | None = None
        self._blob_ready = False
        self.sizer = sizer
        self._limit = limit
        self._once: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext

    def start(self, stream: Stream) -> None:
        if stream.cursor.held_whole:
            self._once = self._pool.copies_once()

    def limit(self) -> int:
        return self._limit

    def chunk_size(self, stream: Stream) -> int | None:
        return self.sizer.next_size(stream.cursor.remaining)

    def place(self, chunk: Chunk, stream: Stream) -> tuple[Future[ChunkResult], int, str]:
        if not self._blob_ready:
            self._fn_blob = self._pool.prepare_fn(self._fn)
            self._blob_ready = True
        options = self._options.for_chunk(len(chunk))
        args = stream.cursor.as_args(chunk)
        with self._once():
            future = self._pool.submit_chunk(self._fn, args, self._fn_blob, options)
        return future, len(chunk), self._tag

    def observe(self, count: int, wall: float, cpu: float, tag: str, stream: Stream) -> None:
        self.sizer.observe(count, wall)

    def release(self, abort: bool, settled: bool) -> None:
        # The pool is the caller's; the record of what was placed goes, with
        # its hold on the shared memory (the tasks in flight hold their own).
        self._once = contextlib.nullcontext

    def runs_here(self) -> bool:
        return False  # every chunk goes to the pool
