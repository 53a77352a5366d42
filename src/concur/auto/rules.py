"""The rules: measurements in, a Decision out. Pure functions, no clocks.

``choose()`` estimates how long the remaining items take inline, on
threads and on processes (``estimate``) and picks the fastest; every
constant here is explained in docs/auto.md, and tests/test_auto_rules.py
checks the rules as tables.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

from .._backends import BACKENDS as ALL_BACKENDS
from .._backends import LOCAL_BACKENDS
from .._pool import CHUNK_TARGET_S
from .._proc import cpu_count

# The rules' constants; docs/auto.md explains each.
PROBE_WAIT_S = 0.002  # how long item 0 may run before it counts as "long"
INLINE_PROBE_S = 0.005  # how long tiny items are timed inline
INLINE_PROBE_CHUNKS = 4  # ... in this many chunks at least (1, 2, 4, 8 items...)
INLINE_ITEM_S = 50e-6  # below this per item, handing work to a thread costs more than it
INLINE_TOTAL_S = 0.002  # remaining work this small runs inline whatever it is
WAITING = 0.5  # wait fraction above which work counts as waiting
GIL_FREE_UTILIZATION = 1.3  # process CPU per wall second that proves the GIL is released
PARALLEL_TEST_S = 0.004  # CPU each thread gets in the parallel test of the GIL
PARALLEL_TEST_WORK_S = 0.02  # ... which runs when the computing left takes this long
THREAD_BOUND = 256  # most threads auto will run at once
LONG_RUN = 1_000_000  # the items an open-ended run is decided (and estimated) for
BACKENDS = LOCAL_BACKENDS


def gil_enabled() -> bool:
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


@dataclass(frozen=True)
class Measurements:
    """What auto measured, per item (seconds)."""

    items: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    transfer: float = 0.0  # pickling the arguments and the result, once each
    utilization: float | None = None  # process CPU per wall second, with 2 threads busy
    released: bool = False  # threads ran items side by side, none waiting for the GIL
    cores: int = 1
    gil: bool = True
    warm: bool = False  # a process pool is already running: its start-up is paid

    @property
    def wait_fraction(self) -> float:
        return 0.0 if self.wall <= 0 else max(0.0, 1.0 - self.cpu / self.wall)


@dataclass(frozen=True)
class Decision:
    """Where the work runs and why."""

    backend: str
    workers: int
    chunksize: int
    reason: str
    measurements: Measurements = field(default_factory=Measurements)
    source: str = "measured"  # or "environment" (CONCUR_BACKEND), "given" (backend=...)
    warnings: tuple[str, ...] = ()  # what makes the measurements doubtful (advise)

    def __str__(self) -> str:
        warned = "".join(f"; warning: {text}" for text in self.warnings)
        if self.backend == "inline":
            return f"inline: {self.reason}{warned}"
        kind = {"thread": "threads", "dask": "Dask worker threads"}.get(self.backend, "processes")
        # 0: not chosen up front; the engine sizes chunks from measured time per item.
        chunks = f"chunks of {self.chunksize}" if self.chunksize else "chunks sized as it runs"
        return f"{self.workers} {kind}, {chunks}: {self.reason}{warned}"


def choose(m: Measurements, remaining: int | None) -> Decision:
    """The rules: measurements and the number of items left → a Decision.

    Estimates how long the remaining items take inline, on threads and on
    processes, and picks the fastest (see ``estimate``); ties go to the
    cheaper backend (inline, then threads).
    """
    n = remaining if remaining is not None else LONG_RUN
    per_item = fmt_s(m.wall)
    if remaining is not None and remaining <= 0:
        return Decision("inline", 1, 1, f"every item ran while being measured ({per_item} each)", m)
    if m.wall * n < INLINE_TOTAL_S:
        why = f"all that is left takes {fmt_s(m.wall * n)}"
        return Decision("inline", 1, items_per_chunk(m, n, "inline"), why, m)
    times, threads = estimate(m, n)
    best = min(times, key=lambda backend: times[backend] * _PREFERENCE[backend])
    pct = f"CPU {100 * (1 - m.wait_fraction):.0f}% of wall time, {per_item} per item"
    # The estimates shown are the ones compared: for the items left, or for
    # a long run when their number is unknown.
    label = f"estimated for {n:,} items" if remaining is None else "estimated"
    estimates = ", ".join(f"{name} {fmt_s(t)}" for name, t in times.items() if math.isfinite(t))
    tail = f" ({label}: {estimates})"
    if best == "inline":
        if m.wall < INLINE_ITEM_S:
            why = f"{per_item} per item is less than handing it to a worker costs"
        elif m.cores <= 1:
            why = f"{pct}; one CPU to use: nothing to gain"
        else:
            why = f"{pct}; too little work to pay for workers"
        return Decision("inline", 1, items_per_chunk(m, n, "inline"), why + tail, m)
    if best == "thread":
        if m.wait_fraction >= WAITING:
            ratio = m.wall / max(m.cpu, m.wall / 1000)
            why = f"{pct}: waiting; wait/compute {ratio:.0f} → {threads} threads"
            return Decision("thread", threads, 1, why + tail, m)
        if not m.gil:
            why = f"{pct}; no GIL: {threads} threads"
        elif m.utilization is not None and m.utilization > GIL_FREE_UTILIZATION:
            why = f"{pct}; 2 threads used {m.utilization:.1f} CPUs: the GIL is released → threads"
        elif m.released:
            why = f"{pct}; threads ran it side by side, none waiting for the GIL: it is released"
        else:
            why = f"{pct}: waits hide the computing → {threads} threads"
        return Decision("thread", threads, items_per_chunk(m, n, "thread"), why + tail, m)
    chunk = items_per_chunk(m, n, "process")
    why = f"{pct}; {m.cores} cores → {m.cores} processes, chunks of {chunk}"
    return Decision("process", m.cores, chunk, why + tail, m)


# Per hand-off costs the estimates use (measured on the machine concur is
# developed on; docs/auto.md), and a preference for cheaper backends.
THREAD_HANDOFF_S = 20e-6
PROCESS_HANDOFF_S = 150e-6
PROCESS_START_S = 0.05
# Threads must beat inline by 20%: a wait fraction measured on a busy machine
# is noisy (a thread ready to run but not scheduled looks like waiting), and
# computing threads lose time handing the GIL to each other.
_PREFERENCE = {"inline": 1.0, "thread": 1.2, "process": 1.35}


def gil_free(m: Measurements) -> bool:
    return (
        not m.gil
        or m.released
        or (m.utilization is not None and m.utilization > GIL_FREE_UTILIZATION)
    )


def estimate(m: Measurements, n: int) -> tuple[dict[str, float], int]:
    """Seconds the next ``n`` items take on each backend, and the thread count.

    inline     n × wall
    threads    the larger of: the CPU part, serialized by the GIL (spread over
               the cores when the GIL is released), and n × wall / threads;
               plus a hand-off per chunk
    processes  n × (wall + pickling) / cores, a hand-off per chunk, and the
               pool's start-up unless one already runs
    Threads: cores × wall/CPU (what keeps every core busy while they wait),
    at most ``THREAD_BOUND`` and ``n``.
    """
    cores = max(1, m.cores)
    ratio = m.wall / max(m.cpu, m.wall / 1000, 1e-9)
    threads = max(1, min(THREAD_BOUND, n, max(cores, math.ceil(cores * ratio))))
    serial_cpu = m.cpu / cores if gil_free(m) else m.cpu
    thread_chunk = 1 if m.wait_fraction >= WAITING else items_per_chunk(m, n, "thread")
    thread_time = max(n * serial_cpu, n * m.wall / threads) + n * THREAD_HANDOFF_S / thread_chunk
    process_time = math.inf
    if cores > 1 and math.isfinite(m.transfer):
        process_chunk = items_per_chunk(m, n, "process")
        process_time = (
            n * (m.wall + m.transfer) / cores
            + n * PROCESS_HANDOFF_S / process_chunk / cores
            + (0.0 if m.warm else PROCESS_START_S)
        )
    return {"inline": n * m.wall, "thread": thread_time, "process": process_time}, threads


def items_per_chunk(m: Measurements, n: int, backend: str) -> int:
    """Items per chunk: long enough to hide the hand-off, short enough to balance."""
    size = math.ceil(CHUNK_TARGET_S[backend] / max(m.wall, 1e-9))
    if backend != "inline":  # keep at least two chunks per worker
        size = min(size, max(1, n // (m.cores * 2)))
    return max(1, min(size, 100_000))


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


def forced(backend: str, source: str, workers: int | None = None) -> Decision:
    """A decision nobody measured: CONCUR_BACKEND, or a backend the caller named."""
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {backend!r}"
        )
    cores = cpu_count()
    default = {"inline": 1, "thread": min(32, cores + 4), "process": cores}[backend]
    said = f"backend={backend!r}" if source == "backend=" else f"{source}={backend}"
    return Decision(backend, workers or default, 0, f"set by {said}", source=source)


def environment_override(local: str | None = None) -> str | None:
    """The backend ``CONCUR_BACKEND`` names, or None for auto.

    ``dask`` is for concur.map, imap and run; ``local`` names a caller that
    can only run work on this machine, which then refuses it.
    """
    value = os.environ.get("CONCUR_BACKEND", "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in ALL_BACKENDS:
        *most, last = ALL_BACKENDS
        raise ValueError(
            f"CONCUR_BACKEND={value!r} is not a backend; use {', '.join(most)} or {last}"
        )
    if value == "dask" and local is not None:
        raise ValueError(
            f"CONCUR_BACKEND=dask sends concur.map, imap and run to Dask, but {local} runs "
            "work on this machine: unset CONCUR_BACKEND for it, or use concur.DaskPool"
        )
    return value
