"""Pools that outlive a run: ``concur.map/imap`` reuse warm workers.

A run that ends cleanly (every chunk finished, no Ctrl-C) parks its thread
pool and its process pool on the shelf instead of stopping them; the next
run that needs a pool of that kind and size leases it, so repeated calls
pay no start-up. A parked pool stops after ``CONCUR_KEEP_WARM`` seconds
idle (default ``KEEP_WARM_S``; 0 turns parking off; one keeper thread
watches the times), at interpreter exit
(the pools' own exit hooks), or on ``release_warm()``. One pool of each
kind is kept at most (a thread pool, a process pool, the joblib backend's
pool): a second one parked stops the first.

A run that fails or is interrupted stops its pools as before: their workers
may still run its chunks, and a later run must not inherit them. A child
made by ``fork()`` forgets the shelf (the pools are its parent's).

``RunPools`` is a run's view: it leases on first use and parks or stops at
the end. ``AutoPool.map`` uses its own pools instead (``OwnPools`` there).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol

from .. import _sigmask
from .._pool import PoolBase
from ..threads import ThreadPool
from .rules import THREAD_BOUND

log = logging.getLogger("concur.auto")

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

    def watch(self, run: Callable[[], None]) -> Future[None]:
        """Run auto's inline watchdog (``inline.Watchdog``) for this run."""
        ...


def own_thread(run: Callable[[], None]) -> Future[None]:
    """``run`` on a thread of its own (the watchdog of a run whose pools are
    the caller's: their threads, tasks and stats are the caller's work)."""
    done: Future[None] = Future()
    done.set_running_or_notify_cancel()  # running from now: not to be cancelled

    def body() -> None:
        try:
            run()
        finally:
            done.set_result(None)

    threading.Thread(target=body, name="concur-auto-watchdog", daemon=True).start()
    return done


def same_key(a: object, b: object) -> bool:
    """Whether two shelf keys are equal; one that cannot be compared (arrays
    among a pool's options) is taken as different."""
    try:
        return bool(a == b)
    except Exception:
        return False


class Shelf:
    """Idle pools, at most one per kind, each with its key (what a lease must
    ask for: a worker count, or that and a pool's options) and the time it
    stops at.

    One keeper thread stops pools whose time has come. It is started by the
    first park and ends once nothing has been parked for an idle time (or
    on ``clear``); a later park only notes the
    time, and wakes the keeper only when it waits for a later one (never,
    unless ``CONCUR_KEEP_WARM`` shrinks). A thread started per park would
    cost each run's end a wait for it to run: beside another thread that
    computes, a GIL hand-off of up to a switch interval (5 ms).
    """

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        self._cond = threading.Condition()
        self._parked: dict[str, tuple[object, PoolBase, float]] = {}
        self._keeper: threading.Thread | None = None
        self._wakes_at = math.inf  # when the keeper looks next
        self._generation = 0  # a keeper of an older one ends (``clear``)
        self._idle_s = KEEP_WARM_S  # the last park's: how long the keeper stays
        self._pid = os.getpid()

    def has(self, kind: str, key: object) -> bool:
        with self._cond:
            entry = self._parked.get(kind)
            return entry is not None and same_key(entry[0], key)

    def lease(self, kind: str, key: object) -> PoolBase | None:
        with self._cond:
            entry = self._parked.get(kind)
            if entry is None or not same_key(entry[0], key):
                return None
            del self._parked[kind]
        pool = entry[1]
        if pool.accepting():
            return pool
        _stop(pool)
        return None

    def park(self, kind: str, key: object, pool: PoolBase) -> bool:
        """Keep an idle pool for the next run; False when parking is off.
        One of the same kind parked before is stopped."""
        idle = keep_warm_s()
        if idle <= 0 or os.getpid() != self._pid or not pool.accepting():
            return False
        stops_at = time.monotonic() + idle
        with self._cond:
            self._idle_s = idle
            old = self._parked.pop(kind, None)
            self._parked[kind] = (key, pool, stops_at)
            if self._keeper is None:
                # Started here, under the lock: ``clear`` never finds a
                # keeper it cannot join.
                self._keeper = threading.Thread(
                    target=self._keep,
                    args=(self._generation,),
                    name="concur-warm-keeper",
                    daemon=True,
                )
                self._keeper.start()
            elif stops_at < self._wakes_at:
                self._cond.notify()
        if old is not None:
            _stop(old[1])
        return True

    def _keep(self, generation: int) -> None:
        _sigmask.hold_in_this_thread()
        try:
            self._keep_on(generation)
        finally:  # had it failed, the next park starts another keeper
            with self._cond:
                if self._keeper is threading.current_thread():
                    self._keeper = None

    def _keep_on(self, generation: int) -> None:
        empty_since = None  # nothing parked since: a run holds the pools
        while True:
            with self._cond:
                if generation != self._generation:
                    return  # cleared: what is parked now is a new keeper's
                now = time.monotonic()
                due = [kind for kind, (_, _, at) in self._parked.items() if at <= now]
                pools = [self._parked.pop(kind)[1] for kind in due]
                if not pools:
                    if self._parked:
                        empty_since = None
                        self._wakes_at = min(at for _, _, at in self._parked.values())
                    else:
                        # Stay for one idle time: the run holding the pools
                        # parks them again, and a new keeper would cost it.
                        empty_since = now if empty_since is None else empty_since
                        self._wakes_at = empty_since + self._idle_s
                        if now >= self._wakes_at:
                            self._keeper = None  # under the lock: a park now starts one
                            return
                    # CONCUR_KEEP_WARM=inf: as long as a wait can be
                    self._cond.wait(min(self._wakes_at - now, threading.TIMEOUT_MAX))
                    continue
            for pool in pools:
                try:
                    _stop(pool)
                except Exception:  # one pool that fails to stop stops no other
                    log.exception("concur: stopping a warm pool failed")

    def clear(self) -> None:
        with self._cond:
            entries = list(self._parked.values())
            self._parked.clear()
            keeper, self._keeper = self._keeper, None
            self._generation += 1
            self._wakes_at = math.inf
            self._cond.notify()
        for _, pool, _ in entries:
            _stop(pool)
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join()


def _stop(pool: PoolBase) -> None:
    pool.shutdown(wait=True, cancel_futures=True)


shelf = Shelf()  # concur.map's pools, and the joblib backend's ("joblib")
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=shelf.forget)


def release_warm() -> None:
    """Stop every pool kept warm between calls (``concur.map``'s, and the
    joblib backend's), now.

    For programs that are about to fork, that want no idle workers during a
    quiet phase, or tests that count processes. Runs in progress keep theirs.
    """
    shelf.clear()


class RunPools:
    """One run's pools: leased from the shelf (or started) on first use;
    parked again when the run ends cleanly, stopped otherwise."""

    def __init__(self) -> None:
        self._threads: ThreadPool | None = None
        self._processes: ProcessPool | None = None
        self._workers = 0  # the process pool's

    def watch(self, run: Callable[[], None]) -> Future[None]:
        # A task on the run's thread pool, whose thread is there already (on
        # a warm run): starting a thread costs a wait for it to run.
        return self.threads().submit(run)

    def threads(self) -> ThreadPool:
        if self._threads is None:
            leased = shelf.lease("thread", THREAD_BOUND)
            assert leased is None or isinstance(leased, ThreadPool)
            self._threads = leased or ThreadPool(
                THREAD_BOUND, thread_name_prefix="concur-auto-thread"
            )
        return self._threads

    def processes(self, workers: int) -> ProcessPool:
        if self._processes is None:
            from ..processes import ProcessPool  # only now: inline runs need none of it

            leased = shelf.lease("process", workers)
            assert leased is None or isinstance(leased, ProcessPool)
            self._processes = leased or ProcessPool(workers)
            self._workers = workers
        return self._processes

    def warm(self, workers: int) -> bool:
        return self._processes is not None or shelf.has("process", workers)

    def release(self, abort: bool, settled: bool) -> None:
        for pool in (self._threads, self._processes):
            if pool is None:
                continue
            kind, workers = (
                ("thread", THREAD_BOUND) if pool is self._threads else ("process", self._workers)
            )
            if abort:
                pool.abort()
            elif not (settled and shelf.park(kind, workers, pool)):
                # Idle threads need no waiting for: told to exit, they are gone
                # within a moment, and joining them would add a context switch
                # each to every run. Processes are always waited for.
                idle_threads = kind == "thread" and settled
                pool.shutdown(wait=not idle_threads, cancel_futures=True)
        self._threads = self._processes = None
