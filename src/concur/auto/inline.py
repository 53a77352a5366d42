"""Chunks that run in the caller's thread, stopped early when they turn heavy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import Any

from .. import _cputime, _sigmask, _task
from .._pool import CHUNK_TARGET_S, ChunkResult
from .._stream import Chunk, Cursor, Values


class Watchdog:
    """Ends an inline chunk's iterator at a deadline, from another thread.

    A list, tuple or range iterator's ``__setstate__`` moves its index; at the end, the
    ``map`` feeding ``list.extend`` stops after the item in progress. The
    watch runs as a task on the run's thread pool (``start`` submits it),
    whose thread is already there: starting a thread of its own would wait
    for the thread to run, and beside another thread that computes, each
    such wait is a GIL hand-off of up to a switch interval (5 ms). It lives
    while its AutoMap runs inline chunks.
    """

    def __init__(self, start: Callable[[Callable[[], None]], Future[Any]]) -> None:
        self._start = start
        self._cond = threading.Condition()
        self._job: tuple[Any, int, float] | None = None
        self._task: Future[Any] | None = None
        self._stopped = False
        self._idle = False  # waiting with no deadline: only then must arm() wake it
        self._thread: int | None = None  # the pool thread watching, while it does

    def arm(self, iterator: Any, end: int, deadline: float) -> None:
        with self._cond:
            self._job = (iterator, end, deadline)
            if self._task is None and not self._stopped:
                self._task = self._start(self._run)
            elif self._idle:
                # A watchdog already timing an earlier deadline re-reads the job
                # when it wakes; waking it now would only cost the caller the GIL.
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._job = None

    def stop(self, wait: bool = True) -> None:
        """End the watch; with ``wait``, once its task has returned."""
        with self._cond:
            self._stopped = True
            self._job = None
            self._cond.notify()
            task = self._task
        if task is None or task.cancel():  # never started: nothing to wait for
            return
        if wait and threading.get_ident() != self._thread:  # not from the watch itself
            futures_wait([task])

    def _run(self) -> None:
        # Like concur's own threads, no signal while watching; the pool's
        # thread has its mask back for what it runs next.
        with _sigmask.Held() as held, self._cond:
            held.hold()
            self._thread = threading.get_ident()
            while not self._stopped:
                job = self._job
                if job is None:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                    continue
                left = job[2] - time.perf_counter()
                if left > 0:
                    self._cond.wait(left)
                    continue
                if self._job is job:
                    job[0].__setstate__(job[1])  # the iterator is now at its end
                    self._job = None


class Done(Future[ChunkResult]):
    """A finished future for a chunk that ran inline."""

    def __init__(self, result: ChunkResult) -> None:
        super().__init__()
        self.set_result(result)


def run_inline(
    call: Callable[[Any], Any], chunk: Chunk, watchdog: Watchdog, cursor: Cursor
) -> tuple[Done, int]:
    """Run a chunk here; return its future and how many items it took.

    The items run through ``list.extend(map(fn, iterator))``, as fast as a
    plain loop. A watchdog thread ends the iterator early once the chunk
    has run 4 × the inline target: work that turns heavy mid-chunk is
    noticed after one slow item, at no cost per item. Items not run go
    back to the input. An item that raises ends the chunk too
    (``extend`` keeps the values before it).
    """
    values = Values()
    items = iter(chunk)
    if len(chunk) > 1:  # one item cannot be cut short: no watch, no thread woken
        watchdog.arm(items, len(chunk), time.perf_counter() + 4 * CHUNK_TARGET_S["inline"])
    # After arm: its first call starts the watch on a pool thread, no cost of the items.
    start, process0 = _cputime.clock(), time.process_time()
    try:
        values.extend(map(call, items))
    except Exception as exc:
        outcomes: list[_task.Outcome] = [(_task.OK, v) for v in values]
        outcomes.append((_task.RAISED, exc))
        cursor.push_back(chunk[len(outcomes) :])
        return Done((outcomes, *_spent(start, process0))), len(outcomes)
    finally:
        watchdog.disarm()
    cursor.push_back(chunk[len(values) :])
    return Done((values, *_spent(start, process0))), len(values)


def _spent(start: _cputime.Clock, process0: float) -> tuple[float, float]:
    """Wall and CPU seconds of a chunk that ran here (``_cputime.spent``: the
    host's queue is not the items' waiting), less the time other threads of
    the program computed meanwhile: while another thread holds the GIL this
    one cannot run, and that is neither what the items cost nor a wait that
    more threads could fill (they would need the GIL too)."""
    wall, cpu = _cputime.spent(start)  # cpu: with what was computed elsewhere for it
    own = time.thread_time() - start[1]
    others = max(0.0, time.process_time() - process0 - cpu)
    return max(own, wall - others), cpu
