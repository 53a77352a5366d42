"""Pools that outlive a run: ``concur.map/imap`` reuse warm workers.

A run that ends cleanly (every chunk finished, no Ctrl-C) parks its thread
pool and its process pool on the shelf instead of stopping them; the next
run that needs a pool of that kind and size leases it, so repeated calls
pay no start-up. A parked pool stops after ``CONCUR_KEEP_WARM`` seconds
idle (default ``KEEP_WARM_S``; 0 turns parking off), at interpreter exit
(the pools' own exit hooks), or on ``release_warm()``. One thread pool and
one process pool are kept at most: a second one parked stops the first.

A run that fails or is interrupted stops its pools as before: their workers
may still run its chunks, and a later run must not inherit them. A child
made by ``fork()`` forgets the shelf (the pools are its parent's).

``RunPools`` is a run's view: it leases on first use and parks or stops at
the end. ``AutoPool.map`` uses its own pools instead (``OwnPools`` there).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Protocol

from .. import _sigmask
from .._pool import PoolBase
from ..threads import ThreadPool
from .rules import THREAD_BOUND

if TYPE_CHECKING:
    from ..processes import ProcessPool

KEEP_WARM_S = 10.0  # idle seconds a parked pool is kept (CONCUR_KEEP_WARM overrides)


def keep_warm_s() -> float:
    value = os.environ.get("CONCUR_KEEP_WARM", "").strip()
    if not value:
        return KEEP_WARM_S
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(
            f"CONCUR_KEEP_WARM={value!r} is not a number of seconds; "
            "use e.g. CONCUR_KEEP_WARM=30, or 0 to stop pools at the end of each run"
        ) from None
    return max(0.0, seconds)


class Pools(Protocol):
    """Where an auto run gets its pools, and what happens to them at its end."""

    def threads(self) -> ThreadPool: ...

    def processes(self, workers: int) -> ProcessPool: ...

    def warm(self, workers: int) -> bool:
        """Whether a process pool of ``workers`` is running already (its
        start-up is paid)."""
        ...

    def release(self, abort: bool, settled: bool) -> None: ...


class _Timer(threading.Timer):
    """A timer thread that takes no signal (see ``_sigmask``)."""

    def run(self) -> None:
        _sigmask.hold_in_this_thread()
        super().run()


class _Shelf:
    """Idle pools by (kind, workers), each with the timer that stops it."""

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._parked: dict[tuple[str, int], tuple[PoolBase, threading.Timer]] = {}
        self._pid = os.getpid()

    def has(self, kind: str, workers: int) -> bool:
        with self._lock:
            return (kind, workers) in self._parked

    def lease(self, kind: str, workers: int) -> PoolBase | None:
        with self._lock:
            entry = self._parked.pop((kind, workers), None)
        if entry is None:
            return None
        pool, timer = entry
        timer.cancel()
        if pool.accepting():
            return pool
        _stop(pool)
        return None

    def park(self, kind: str, workers: int, pool: PoolBase) -> bool:
        """Keep an idle pool for the next run; False when parking is off."""
        idle = keep_warm_s()
        if idle <= 0 or os.getpid() != self._pid or not pool.accepting():
            return False
        timer = _Timer(idle, self._expire, ((kind, workers), pool))
        timer.name = f"concur-warm-{kind}-timer"
        timer.daemon = True
        with self._lock:
            evicted = [key for key in self._parked if key[0] == kind]
            old = [self._parked.pop(key) for key in evicted]
            self._parked[(kind, workers)] = (pool, timer)
            timer.start()
        for other, other_timer in old:
            other_timer.cancel()
            _stop(other)
        return True

    def _expire(self, key: tuple[str, int], pool: PoolBase) -> None:
        with self._lock:
            entry = self._parked.get(key)
            if entry is None or entry[0] is not pool:
                return  # leased or replaced meanwhile
            del self._parked[key]
        _stop(pool)

    def clear(self) -> None:
        with self._lock:
            entries = list(self._parked.values())
            self._parked.clear()
        for pool, timer in entries:
            timer.cancel()
            _stop(pool)
        for _, timer in entries:
            if timer is not threading.current_thread():
                timer.join()


def _stop(pool: PoolBase) -> None:
    pool.shutdown(wait=True, cancel_futures=True)


_shelf = _Shelf()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_shelf._forget)


def release_warm() -> None:
    """Stop every pool kept warm between ``concur.map`` calls, now.

    For programs that are about to fork, that want no idle workers during a
    quiet phase, or tests that count processes. Runs in progress keep theirs.
    """
    _shelf.clear()


class RunPools:
    """One run's pools: leased from the shelf (or started) on first use;
    parked again when the run ends cleanly, stopped otherwise."""

    def __init__(self) -> None:
        self._threads: ThreadPool | None = None
        self._processes: ProcessPool | None = None
        self._workers = 0  # the process pool's

    def threads(self) -> ThreadPool:
        if self._threads is None:
            leased = _shelf.lease("thread", THREAD_BOUND)
            assert leased is None or isinstance(leased, ThreadPool)
            self._threads = leased or ThreadPool(
                THREAD_BOUND, thread_name_prefix="concur-auto-thread"
            )
        return self._threads

    def processes(self, workers: int) -> ProcessPool:
        if self._processes is None:
            from ..processes import ProcessPool  # only now: inline runs need none of it

            leased = _shelf.lease("process", workers)
            assert leased is None or isinstance(leased, ProcessPool)
            self._processes = leased or ProcessPool(workers)
            self._workers = workers
        return self._processes

    def warm(self, workers: int) -> bool:
        return self._processes is not None or _shelf.has("process", workers)

    def release(self, abort: bool, settled: bool) -> None:
        for pool in (self._threads, self._processes):
            if pool is None:
                continue
            kind, workers = (
                ("thread", THREAD_BOUND) if pool is self._threads else ("process", self._workers)
            )
            if abort:
                pool.abort()
            elif not (settled and _shelf.park(kind, workers, pool)):
                # Idle threads need no waiting for: told to exit, they are gone
                # within a moment, and joining them would add a context switch
                # each to every run. Processes are always waited for.
                idle_threads = kind == "thread" and settled
                pool.shutdown(wait=not idle_threads, cancel_futures=True)
        self._threads = self._processes = None
