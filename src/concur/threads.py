"""ThreadPool: a ``ThreadPoolExecutor`` with chunked ``map`` and streaming ``imap``.

    submit ─► work queue ─► worker thread (started on demand, up to max_workers)
                                 │ runs fn, sets the Future
                                 └─► waits for the next item; ``None`` = exit

Threads share the caller's memory, so nothing is pickled. A thread is started
only when no idle one is waiting, like the standard library's. At interpreter
exit every ThreadPool finishes its queued work and joins its threads.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

from . import _pool, _task
from ._exit import register_exit_hook
from .errors import PoolClosed, ThreadPoolBroken

P = ParamSpec("P")
R = TypeVar("R")

_counter = itertools.count()


class _WorkItem:
    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.future.set_exception(exc)
            self = None  # type: ignore[assignment]  # break the cycle through the traceback
        else:
            self.future.set_result(result)


class ThreadPool(_pool.PoolBase):
    """A pool of threads; a drop-in for ``concurrent.futures.ThreadPoolExecutor``."""

    _kind = "thread"

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix or f"concur-ThreadPool-{next(_counter)}"
        self._initializer = initializer
        self._initargs = initargs
        self._queue: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._broken: str | None = None
        # When the pool is collected without shutdown, the exit marker lets
        # its idle threads go.
        queue_ = self._queue
        self._ref = weakref.ref(self, lambda _: queue_.put(None))
        register_exit_hook(self, ThreadPool._exit_hook)

    # -- Executor API ------------------------------------------------------

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        with self._lock:
            self._check_open()
            future: Future[R] = Future()
            self._queue.put(_WorkItem(future, fn, args, kwargs))
            self._adjust()
            return future

    def _submit_chunk(
        self, fn: Callable[..., Any], items: list[tuple[Any, ...]], fn_blob: bytes | None
    ) -> Future[_pool.ChunkResult]:
        return self.submit(_task.run_chunk, fn, items, False)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                self._drain(cancel=True)
            # One exit marker wakes one thread; each thread passes it on.
            self._queue.put(None)
        if wait:
            for thread in list(self._threads):
                thread.join()

    # -- internals ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._broken is not None:
            raise ThreadPoolBroken(self._broken)
        if self._closed:
            raise PoolClosed("cannot schedule new futures after shutdown")

    def _adjust(self) -> None:
        if self._idle.acquire(blocking=False):
            return
        if len(self._threads) < self._max_workers:
            name = f"{self._prefix}_{len(self._threads)}"
            thread = threading.Thread(name=name, target=_worker_loop, args=(self._ref, self._queue))
            thread.start()
            self._threads.add(thread)

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
        with self._lock:
            self._broken = (
                f"a thread initializer failed ({type(exc).__name__}: {exc}); "
                "the pool cannot run tasks. Fix the initializer and create a new pool."
            )
            self._drain(cancel=False, error=ThreadPoolBroken(self._broken))
            self._queue.put(None)

    def _exit_hook(self) -> None:
        self.shutdown(wait=True)


def _worker_loop(pool_ref: weakref.ref[ThreadPool], work: queue.SimpleQueue[Any]) -> None:
    pool = pool_ref()
    if pool is not None and pool._initializer is not None:
        try:
            pool._initializer(*pool._initargs)
        except BaseException as exc:
            pool._initializer_failed(exc)
            return
    del pool
    while True:
        item = work.get()
        if item is not None:
            item.run()
            del item
            pool = pool_ref()
            if pool is not None:
                pool._idle.release()
            del pool
            continue
        pool = pool_ref()
        if pool is None or pool._closed:
            work.put(None)  # pass the exit marker on to the next thread
            return
        del pool
