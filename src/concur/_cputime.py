"""What a call cost: its thread's wall and CPU time, and what was computed
elsewhere for it.

``clock()`` and ``spent()`` time a chunk where it runs (a worker, a pool
thread, the caller's thread for auto's inline chunks); auto reads waiting
from the gap between wall and CPU time, so two things must not open it:

* the host's run queue: a thread that never blocked (no voluntary context
  switch) computed all the time it was not running, so its wall time is
  its CPU time;
* a call's own map: a task that runs ``concur.map`` (or a pool's
  ``map``/``imap``) waits for chunks that compute on other threads or
  processes. The engine collecting them counts, per thread, their CPU
  time, their own (host-queue-free) wall time, and how long the thread
  waited for them (``delegate``, ``streaming``); ``spent`` counts that wait
  as computing in the proportion its chunks computed. Chunks that wait on
  sockets keep the task's wait a wait; chunks that compute, on a host too
  busy to run them at once, do not turn into one.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

try:
    import resource
except ImportError:  # not on this platform
    resource = None  # type: ignore[assignment]

# Per-thread resource usage (Linux); None elsewhere.
_RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)

# Per thread (by ident): [CPU s, wall s] of the chunks it collected that ran
# elsewhere, the seconds it waited for them, and how many maps it runs now.
_elsewhere: dict[int, list[float]] = {}
if hasattr(os, "register_at_fork"):  # a child forked inside a map runs none
    os.register_at_fork(after_in_child=_elsewhere.clear)

Totals = tuple[float, float, float]  # see ``elsewhere``
Clock = tuple[float, float, "int | None", Totals]
_NOTHING: Totals = (0.0, 0.0, 0.0)


def _record(ident: int) -> list[float]:
    record = _elsewhere.get(ident)
    if record is None:
        record = _elsewhere[ident] = [0.0, 0.0, 0.0, 0.0]
    return record


def delegate(wall: float, cpu: float) -> None:
    """A chunk that ran on another thread or process for this thread's call."""
    record = _record(threading.get_ident())
    record[0] += cpu
    record[1] += wall


@contextlib.contextmanager
def streaming() -> Iterator[None]:
    """This thread runs a map meanwhile: the time it does not compute itself
    (an inline chunk, placing chunks), it waits for chunks run elsewhere."""
    record = _record(threading.get_ident())
    record[3] += 1
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        waited = (time.perf_counter() - wall0) - (time.thread_time() - cpu0)
        record[2] += max(0.0, waited)
        record[3] -= 1


def is_streaming(ident: int) -> bool:
    """Whether thread ``ident`` is inside a map now (what it waits for computes)."""
    record = _elsewhere.get(ident)
    return record is not None and record[3] > 0


def elsewhere(ident: int | None = None) -> Totals:
    """This thread's (or ``ident``'s) totals so far: CPU and wall seconds of
    chunks run elsewhere for it, and seconds it waited for them."""
    record = _elsewhere.get(threading.get_ident() if ident is None else ident)
    return _NOTHING if record is None else (record[0], record[1], record[2])


def computed_elsewhere(before: Totals, now: Totals) -> float:
    """CPU seconds to count for a call between two ``elsewhere`` readings:
    the chunks' CPU time, or, if more, the time spent waiting for them in
    the share of their own time they computed."""
    if now == before:  # most calls: nothing ran elsewhere (a worker's every call)
        return 0.0
    cpu, wall, waited = (b - a for a, b in zip(before, now, strict=True))
    share = min(1.0, cpu / wall) if wall > 0 else 0.0
    return max(cpu, waited * share)


def clock() -> Clock:
    """This thread's wall, CPU and blocking count now, for ``spent``."""
    return time.perf_counter(), time.thread_time(), _voluntary_switches(), elsewhere()


def spent(start: Clock) -> tuple[float, float]:
    """Wall and CPU seconds of this thread since ``start``; the CPU time
    with what was computed elsewhere for it (``computed_elsewhere``).

    A thread that never blocked meanwhile (no voluntary context switch: no
    sleep, read, lock or GIL wait) spent the wall time it did not compute
    waiting for the host to run it: its wall time is then its CPU time.
    """
    wall0, cpu0, switches0, elsewhere0 = start
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    if switches0 is not None and _voluntary_switches() == switches0:
        wall = cpu
    return wall, cpu + computed_elsewhere(elsewhere0, elsewhere())


def blocking_counted() -> bool:
    """Whether ``spent`` can tell a thread that blocked from one the host
    did not run (a per-thread count of voluntary switches: Linux)."""
    return _RUSAGE_THREAD is not None


def _voluntary_switches() -> int | None:
    """How often this thread has blocked so far (Linux), else None."""
    if _RUSAGE_THREAD is None:
        return None
    return int(resource.getrusage(_RUSAGE_THREAD).ru_nvcsw)
