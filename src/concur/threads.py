"""ThreadPool: a ``ThreadPoolExecutor`` with time limits, chunked ``map`` and ``imap``.

    submit ─► work queue ─► worker thread (started on demand, up to max_workers)
                                 │ runs fn, settles the Future
                                 └─► waits for the next item; ``None`` = exit

    a task with a time limit ─► deadline watcher thread (only while such tasks run)
                                 └─► at the deadline: the Future fails with TaskTimeout

Threads share the caller's memory, so nothing is pickled. A thread is started
only when no idle one is waiting, like the standard library's.

A Python thread cannot be stopped from outside. When a task runs past its
time limit its future fails on time and the thread is *abandoned*: it keeps
its slot (the pool does not start a thread in its place) until the function
really returns, then takes new work again. ``shutdown(wait=True)`` does not
wait for abandoned threads, and worker threads are daemon threads so an
abandoned one cannot keep the interpreter from exiting; at exit each pool
still finishes its queued work first, as the standard library's does.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import _future, _pool, _share, _stats, _task
from ._deadlines import Deadlines
from ._exit import register_exit_hook
from .errors import TaskTimeout, ThreadPoolBroken
from .ps import WorkerInfo

_counter = itertools.count()
_task_ids = itertools.count()


class _WorkItem:
    __slots__ = ("args", "fn", "future", "id", "items", "kwargs", "label_fn", "timeout")

    def __init__(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        label_fn: object,
        items: int = 1,
    ) -> None:
        self.id = next(_task_ids)
        self.items = items  # calls it makes: a chunk's items
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self.label_fn = label_fn

    @property
    def label(self) -> str:
        return _task.describe(self.label_fn)

    def run(self) -> None:
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            _future.settle(self.future, error=exc)
            del exc  # break the cycle through the traceback
        else:
            _future.settle(self.future, result)


class _Slot:
    """What one worker thread is doing, for time limits and ``workers()``."""

    __slots__ = ("abandoned", "item", "record", "started", "tasks_done", "thread")

    def __init__(self, name: str) -> None:
        self.thread = threading.current_thread()  # replaced by the pool at once
        self.record = _stats.WorkerRecord(name, os.getpid(), None, time.monotonic())
        self.item: _WorkItem | None = None
        self.started = 0.0
        self.tasks_done = 0
        self.abandoned = False


def _expire(slot: _Slot, item: _WorkItem) -> Callable[[], None] | None:
    """The item overran its time limit (the deadline watcher's lock held):
    abandon its thread and, once the lock is released, fail its future."""
    if slot.item is not item or item.timeout is None:
        return None
    slot.abandoned = True
    error = TaskTimeout(item.label, item.timeout)
    return lambda: _future.settle(item.future, error=error)


class ThreadPool(_pool.PoolBase):
    """A pool of threads; a drop-in for ``concurrent.futures.ThreadPoolExecutor``.

    ``task_timeout`` (seconds from when a task starts) fails a late task's
    future with ``TaskTimeout`` on time; its thread is abandoned until it
    returns (threads cannot be stopped). ``pool.options(timeout=...)`` sets
    it for some calls.
    """

    _kind = "thread"

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        task_timeout: float | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._defaults = _pool.TaskOptions(task_timeout)
        self._max_workers = max_workers
        self._prefix = thread_name_prefix or f"concur-ThreadPool-{next(_counter)}"
        self._initializer = initializer
        self._initargs = initargs
        self._queue: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._slots: dict[threading.Thread, _Slot] = {}
        self._deadlines = Deadlines(f"{self._prefix}-deadlines")
        self._lock = threading.Lock()
        self._stats = _stats.Recorder("thread")
        self._closed = False
        self._broken: str | None = None
        self._owner = os.getpid()  # threads do not survive a fork: the pool stays here
        # When the pool is collected without shutdown, the exit marker lets
        # its idle threads go.
        queue_ = self._queue
        self._ref = weakref.ref(self, lambda _: queue_.put(None))
        register_exit_hook(self, ThreadPool._exit_hook)

    # -- Executor API ------------------------------------------------------

    def _submit_with(
        self,
        options: _pool.TaskOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        label_fn: object = None,
        items: int = 1,
    ) -> Future[Any]:
        with self._lock:
            self._check_open()
            future: Future[Any] = _future.RunningFuture()
            args = _share.values(args)
            if any(type(v) is _share.Shared for v in kwargs.values()):
                kwargs = {k: v.value if type(v) is _share.Shared else v for k, v in kwargs.items()}
            item = _WorkItem(future, fn, args, kwargs, options.timeout, label_fn or fn, items)
            self._queue.put(item)
            self._adjust()
            return future

    def submit_chunk(
        self,
        fn: Callable[..., Any],
        items: list[tuple[Any, ...]],
        fn_blob: bytes | None,
        options: _pool.TaskOptions,
    ) -> Future[_pool.ChunkResult]:
        items = [_share.values(args) for args in items]
        return self._submit_with(options, _task.run_chunk, (fn, items, False), {}, fn, len(items))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if os.getpid() != self._owner:
            return  # an inherited copy: its threads were the parent's
        with self._lock:
            self._closed = True
            if cancel_futures:
                self._drain(cancel=True)
            # One exit marker wakes one thread; each thread passes it on.
            self._queue.put(None)
        if wait:
            for slot in list(self._slots.values()):
                if not slot.abandoned:
                    slot.thread.join()

    def abort(self) -> None:
        self.shutdown(wait=False, cancel_futures=True)

    @property
    def _threads(self) -> set[threading.Thread]:
        # ThreadPoolExecutor's attribute of this name, for code that reads it.
        return set(self._slots)

    def workers(self) -> list[WorkerInfo]:
        """Each worker thread now: its state, the task it runs and for how long."""
        now, pid = time.monotonic(), os.getpid()
        rows = []
        for slot in list(self._slots.values()):
            item = slot.item
            state = "abandoned" if slot.abandoned else ("idle" if item is None else "busy")
            rows.append(
                WorkerInfo(
                    name=slot.thread.name,
                    pid=pid,
                    ident=slot.thread.ident,
                    state=state,
                    task_id=item.id if item else None,
                    task=item.label if item else None,
                    running_for=now - slot.started if item else None,
                    tasks_done=slot.tasks_done,
                    rss=None,
                )
            )
        return rows

    def stats(self) -> _stats.PoolStats:
        """What the pool did so far: each thread's start-up, idle and working
        time and tasks done, and the slowest tasks with their labels (see
        docs/supervision.md)."""
        busy = {}
        for slot in list(self._slots.values()):
            started = slot.started  # read before item: a task that starts now counts from 0
            if slot.item is not None:
                busy[id(slot.record)] = started
        return self._stats.snapshot(busy)

    # -- internals ---------------------------------------------------------

    def _check_open(self) -> None:
        broken = None if self._broken is None else ThreadPoolBroken(self._broken)
        _pool.check_open("concur.ThreadPool", self._owner, broken, self._closed)

    def _adjust(self) -> None:
        if self._idle.acquire(blocking=False):
            return
        if len(self._slots) < self._max_workers:
            name = f"{self._prefix}_{len(self._slots)}"
            slot = _Slot(name)
            slot.thread = threading.Thread(
                name=name,
                target=_worker_loop,
                args=(self._ref, self._queue, slot),
                daemon=True,
            )
            self._slots[slot.thread] = slot
            self._stats.started(slot.record)
            slot.thread.start()

    def _run(self, item: _WorkItem, slot: _Slot) -> None:
        if not item.future.set_running_or_notify_cancel():
            return
        cpu = time.thread_time()
        slot.item, slot.started = item, time.monotonic()
        if item.timeout is not None:
            self._deadlines.add(slot, slot.started + item.timeout, lambda: _expire(slot, item))
        try:
            item.run()
        finally:
            if item.timeout is not None:
                self._deadlines.remove(slot)
            wall = time.monotonic() - slot.started
            slot.item, slot.abandoned = None, False
            slot.tasks_done += 1
            self._stats.done(slot.record, item, item.items, wall, time.thread_time() - cpu)

    def _drain(self, cancel: bool, error: BaseException | None = None) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                continue
            if cancel:
                item.future.cancel()
            elif error is not None and item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)

    def _initializer_failed(self, exc: BaseException) -> None:
        # What ThreadPoolExecutor logs for the same event, where it logs it.
        _future.FUTURES_LOG.critical("Exception in initializer:", exc_info=exc)
        with self._lock:
            self._broken = (
                f"a thread initializer failed ({type(exc).__name__}: {exc}); "
                "the pool cannot run tasks. Fix the initializer and create a new pool."
            )
            self._drain(cancel=False, error=ThreadPoolBroken(self._broken))
            self._queue.put(None)


def _worker_loop(
    pool_ref: weakref.ref[ThreadPool], work: queue.SimpleQueue[Any], slot: _Slot
) -> None:
    pool = pool_ref()
    if pool is None:
        _serve(pool_ref, work, slot)
        return
    stats = pool._stats
    try:
        if pool._initializer is not None:
            try:
                pool._initializer(*pool._initargs)
            except BaseException as exc:
                stats.ended(slot.record, "initializer failed")
                pool._initializer_failed(exc)
                return
        stats.ready(slot.record, threading.get_ident())
        del pool
        _serve(pool_ref, work, slot)
    finally:
        stats.ended(slot.record, "shut down")


def _serve(pool_ref: weakref.ref[ThreadPool], work: queue.SimpleQueue[Any], slot: _Slot) -> None:
    """Run work items until the exit marker comes and the pool is closed."""
    while True:
        item = work.get()
        if item is not None:
            pool = pool_ref()
            if pool is None:
                if item.future.set_running_or_notify_cancel():
                    item.run()
            else:
                pool._run(item, slot)
                pool._idle.release()
            del item, pool
            continue
        pool = pool_ref()
        if pool is None or pool._closed:
            work.put(None)  # pass the exit marker on to the next thread
            return
        del pool
