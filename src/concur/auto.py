"""Auto: measure the work, then run it inline, on threads or on processes.

How a run is decided (``AutoMap``, behind ``concur.map/imap/run`` with
``backend="auto"``)::

    item 0 ─► a probe thread ──── done within 2 ms? ── yes ─► tiny: time the next items
                 │                                              inline for up to 5 ms
                 no: sample process CPU over those 2 ms
                 ├─ CPU ≈ 0 ─────────► waiting: threads, as many as wait/compute
                 │                      says (bounded), started now
                 └─ CPU busy ─► item 1 on a second thread for 2 ms more:
                                ├─ CPU > 1.3 cores ─► the GIL is released: threads × cores
                                └─ else ───────────► GIL-bound: processes × cores

Every finished chunk (inline, thread or process) reports its wall and CPU
time; ``choose()`` runs again on the moving averages and the run switches
backend when the work changes (two agreeing verdicts in a row, so noise does
not flap it). Chunks already handed to a backend finish there: no item runs
twice, and results come back in input order when asked.

``choose()`` is a pure function of the measurements, so the rules are tested
directly and documented in ``docs/auto.md``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import _gil, _task
from . import _pool as _pool_base
from ._backends import LOCAL_BACKENDS
from ._pool import CHUNK_TARGET_S, ChunkResult, TaskOptions
from ._proc import cpu_count
from ._stream import Cursor, Stream, Values
from .threads import ThreadPool

if TYPE_CHECKING:
    from .processes import ProcessPool

log = logging.getLogger("concur.auto")

# The rules' constants; docs/auto.md explains each.
PROBE_WAIT_S = 0.002  # how long item 0 may run before it counts as "long"
INLINE_PROBE_S = 0.005  # how long tiny items are timed inline
INLINE_PROBE_CHUNKS = 4  # ... in this many chunks at least (1, 2, 4, 8 items...)
INLINE_ITEM_S = 50e-6  # below this per item, handing work to a thread costs more than it
INLINE_TOTAL_S = 0.002  # remaining work this small runs inline whatever it is
WAITING = 0.5  # wait fraction above which work counts as waiting
GIL_FREE_UTILIZATION = 1.3  # process CPU per wall second that proves the GIL is released
THREAD_BOUND = 256  # most threads auto will run at once
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

    def __str__(self) -> str:
        if self.backend == "inline":
            return f"inline: {self.reason}"
        kind = {"thread": "threads", "dask": "Dask worker threads"}.get(self.backend, "processes")
        # 0: not chosen up front; the engine sizes chunks from measured time per item.
        chunks = f"chunks of {self.chunksize}" if self.chunksize else "chunks sized as it runs"
        return f"{self.workers} {kind}, {chunks}: {self.reason}"


def choose(m: Measurements, remaining: int | None) -> Decision:
    """The rules: measurements and the number of items left → a Decision.

    Estimates how long the remaining items take inline, on threads and on
    processes, and picks the fastest (see ``estimate``); ties go to the
    cheaper backend (inline, then threads).
    """
    n = remaining if remaining is not None else 1_000_000
    per_item = _fmt_s(m.wall)
    if remaining is not None and remaining <= 0:
        return Decision("inline", 1, 1, f"every item ran while being measured ({per_item} each)", m)
    if m.wall * n < INLINE_TOTAL_S:
        return Decision(
            "inline", 1, _chunk(m, n, "inline"), f"all that is left takes {_fmt_s(m.wall * n)}", m
        )
    times, threads = estimate(m, n)
    best = min(times, key=lambda backend: times[backend] * _PREFERENCE[backend])
    pct = f"CPU {100 * (1 - m.wait_fraction):.0f}% of wall time, {per_item} per item"
    label, shown = "estimated", times
    if remaining is None:  # an open-ended run: show the rate, not a total
        label, shown = "estimated per 1,000 items", estimate(m, 1000)[0]
    estimates = ", ".join(f"{name} {_fmt_s(t)}" for name, t in shown.items() if math.isfinite(t))
    tail = f" ({label}: {estimates})"
    if best == "inline":
        if m.wall < INLINE_ITEM_S:
            why = f"{per_item} per item is less than handing it to a worker costs"
        elif m.cores <= 1:
            why = f"{pct}; one core: nothing to gain"
        else:
            why = f"{pct}; too little work to pay for workers"
        return Decision("inline", 1, _chunk(m, n, "inline"), why + tail, m)
    if best == "thread":
        if m.wait_fraction >= WAITING:
            ratio = m.wall / max(m.cpu, m.wall / 1000)
            why = f"{pct}: waiting; wait/compute {ratio:.0f} → {threads} threads"
            return Decision("thread", threads, 1, why + tail, m)
        if not m.gil:
            why = f"{pct}; no GIL: {threads} threads"
        elif _gil_free(m):
            why = f"{pct}; 2 threads used {m.utilization:.1f} CPUs: the GIL is released → threads"
        else:
            why = f"{pct}: waits hide the computing → {threads} threads"
        return Decision("thread", threads, _chunk(m, n, "thread"), why + tail, m)
    chunk = _chunk(m, n, "process")
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


def _gil_free(m: Measurements) -> bool:
    return not m.gil or (m.utilization is not None and m.utilization > GIL_FREE_UTILIZATION)


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
    serial_cpu = m.cpu / cores if _gil_free(m) else m.cpu
    thread_chunk = 1 if m.wait_fraction >= WAITING else _chunk(m, n, "thread")
    thread_time = max(n * serial_cpu, n * m.wall / threads) + n * THREAD_HANDOFF_S / thread_chunk
    process_time = math.inf
    if cores > 1 and math.isfinite(m.transfer):
        process_chunk = _chunk(m, n, "process")
        process_time = (
            n * (m.wall + m.transfer) / cores
            + n * PROCESS_HANDOFF_S / process_chunk / cores
            + (0.0 if m.warm else PROCESS_START_S)
        )
    return {"inline": n * m.wall, "thread": thread_time, "process": process_time}, threads


def _chunk(m: Measurements, n: int, backend: str) -> int:
    """Items per chunk: long enough to hide the hand-off, short enough to balance."""
    size = math.ceil(CHUNK_TARGET_S[backend] / max(m.wall, 1e-9))
    if backend != "inline":  # keep at least two chunks per worker
        size = min(size, max(1, n // (m.cores * 2)))
    return max(1, min(size, 100_000))


def _fmt_s(seconds: float) -> str:
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


def environment_override() -> str | None:
    value = os.environ.get("CONCUR_BACKEND", "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in BACKENDS:
        raise ValueError(
            f"CONCUR_BACKEND={value!r} is not a backend; use auto, {', '.join(BACKENDS)}"
        )
    return value


def _transfer_cost(args: tuple[Any, ...], result: Any) -> float:
    start = time.perf_counter()
    try:
        _task.dumps(args)
        _task.dumps(result)
    except Exception:
        return math.inf  # cannot be pickled: processes are out
    return time.perf_counter() - start


# -- the streaming engine ------------------------------------------------------


def _starred(fn: Callable[..., Any]) -> Callable[[tuple[Any, ...]], Any]:
    def call(args: tuple[Any, ...]) -> Any:
        return fn(*args)

    return call


class _Watchdog:
    """Ends an inline chunk's iterator at a deadline, from another thread.

    A list iterator's ``__setstate__`` moves its index; set to the end, the
    ``map`` feeding ``list.extend`` stops after the item in progress. The
    thread lives only while its AutoMap runs inline chunks.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._job: tuple[Any, int, float] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._idle = False  # waiting with no deadline: only then must arm() wake it

    def arm(self, iterator: Any, end: int, deadline: float) -> None:
        with self._cond:
            self._job = (iterator, end, deadline)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="concur-auto-watchdog", daemon=True
                )
                self._thread.start()
            elif self._idle:
                # A watchdog already timing an earlier deadline re-reads the job
                # when it wakes; waking it now would only cost the caller the GIL.
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._job = None

    def stop(self, wait: bool = True) -> None:
        with self._cond:
            self._stopped = True
            self._job = None
            self._cond.notify()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        with self._cond:
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


class _ThreadClock:
    """Reads another thread's CPU time while it runs a call (``run``).

    ``time.pthread_getcpuclockid`` names the running thread's CPU clock; where
    it is missing, the process's CPU time stands in (the caller only waits).
    """

    def __init__(self) -> None:
        self.clock: int | None = None
        self.start = 0.0
        self.fallback = time.process_time()
        self.tid: int | None = None

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.tid = threading.get_native_id()
        getter = getattr(time, "pthread_getcpuclockid", None)
        if getter is not None:
            try:
                self.start = time.thread_time()
                self.clock = getter(threading.get_ident())
            except OSError:
                self.clock = None
        return fn(*args)

    def used(self) -> float:
        if self.clock is not None:
            try:
                return time.clock_gettime(self.clock) - self.start
            except OSError:
                pass
        return time.process_time() - self.fallback

    def state(self) -> str | None:
        """What the thread does right now (Linux: from /proc): "running"
        (or ready to), "lock" (blocked on a futex: waiting for the GIL or a
        lock), "io" (blocked in any other call: a read, a sleep, a poll), or
        None where that cannot be read.

        Low CPU over wall time alone cannot tell a thread that waits from one
        that is ready but not scheduled on a busy machine, nor from one that
        waits for the GIL while another thread of the program computes; the
        state can.
        """
        if self.tid is None:
            return None
        task = f"/proc/self/task/{self.tid}"
        try:
            with open(f"{task}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            return None
        after_name = stat.rfind(b")") + 2  # the name may hold spaces and brackets
        if stat[after_name : after_name + 1] not in (b"S", b"D"):
            return "running"
        return "lock" if _in_futex(task) else "io"


# The futex call's number, where the thread's current call is read by number.
_FUTEX = {"x86_64": 202, "i686": 240, "aarch64": 98, "armv7l": 240, "riscv64": 98}.get(
    platform.machine()
)


def _in_futex(task: str) -> bool:
    """Whether a blocked thread waits in futex (the GIL, a lock, a condition)."""
    try:
        with open(f"{task}/syscall", "rb") as handle:
            number = handle.read().split(maxsplit=1)[0]
        if _FUTEX is not None and number.isdigit():
            return int(number) == _FUTEX
    except (OSError, IndexError):
        pass
    try:  # the kernel function it sleeps in
        with open(f"{task}/wchan", "rb") as handle:
            return b"futex" in handle.read()
    except OSError:
        return False


class _Done(Future[ChunkResult]):
    """A finished future for a chunk that ran inline."""

    def __init__(self, result: ChunkResult) -> None:
        super().__init__()
        self.set_result(result)


class _Probe:
    """How a run starts: item 0 runs on a thread while this thread watches.

    Done within PROBE_WAIT_S: a small item, timed further inline (``tiny``).
    Still running: waiting or computing is told from the probe thread's own
    CPU clock and state, and whether it holds the GIL from a short spin
    beside it (``long``). Either way the run adopts its first Decision.
    """

    def __init__(self, stream: Stream, placement: _AutoPlacement) -> None:
        self.stream = stream
        self.placement = placement
        self.judge = placement.judge

    def note_transfer(self, first: list[Any], result: Any) -> None:
        self.judge.transfer = _transfer_cost(self.stream.cursor.as_args(first)[0], result)

    def run(self) -> None:
        first = self.stream.cursor.take(1)
        if not first:
            self.judge.adopt(Decision("inline", 1, 1, "no items"))
            return
        threads = self.placement.thread_pool()
        # A computing probe holds the GIL against this thread (which must look
        # at it on time) and against a process pool starting up: shorten the
        # switch interval until the probe items end (see _gil).
        fast = _gil.Hold()
        wall0 = time.perf_counter()
        clock = _ThreadClock()
        probe = threads.submit(
            clock.run, _task.run_chunk, self.placement.fn, self.stream.cursor.as_args(first), False
        )
        self.stream.inflight.add(probe, 1, "probe")
        done, _ = wait([probe], timeout=PROBE_WAIT_S)
        if done:
            fast.release()
            self.tiny(first, probe.result())
            return
        computing = True
        try:
            computing = self.long(first, probe, clock, wall0)
        finally:
            if computing:
                probe.add_done_callback(lambda _: fast.release())
            else:
                fast.release()

    def long(
        self,
        first: list[Any],
        probe: Future[Any],
        clock: _ThreadClock,
        wall0: float,
    ) -> bool:
        """Item 0 is still running after PROBE_WAIT_S: waiting or computing?
        Decides, and returns whether item 0 computes (holds a CPU, maybe the GIL)."""
        self.note_transfer(first, None)
        window = PROBE_WAIT_S
        states_seen: set[str] = set()  # "running", "lock", "io" at the looks
        gil_tests = 0
        while True:
            elapsed = time.perf_counter() - wall0
            used = clock.used()  # the probe thread's own CPU time: others' load is not in it
            busy = used / max(elapsed, 1e-9)
            state = clock.state()
            if state is not None:
                states_seen.add(state)
            # Blocked on a lock is no proof of waiting: it is where a thread
            # waits for the GIL while another thread of the program computes.
            if busy < WAITING and state in ("io", None):
                # Waiting, for an unknown time yet: the ratio measured so far is
                # only a lower bound, so start as many threads as allowed.
                m = self.judge.measure(elapsed, min(used, elapsed / THREAD_BOUND), 1)
                self.judge.adopt(choose(m, self.stream.left()))
                return False
            left = self.stream.left()
            work_left = elapsed * (1_000_000 if left is None else left)
            # Computing, or ready to compute on a host too busy to run it
            if (busy >= WAITING or state == "running") and work_left >= PROCESS_START_S:
                # Computing, and enough of it for parallel work to matter.
                if self.judge.utilization is None and gil_tests < 2:  # each costs the probe CPU
                    gil_tests += 1
                    self.judge.utilization = _gil_test(probe, clock)
                # Only a lower bound so far: act on it when even that pays for
                # processes, or for threads because the GIL is released. Any
                # other verdict waits for the finished item (a bound measured
                # beside the spinner understates the CPU share).
                m = self.judge.measure(elapsed, used, 1)
                verdict = choose(m, left)
                known = self.judge.utilization is not None  # else: maybe test at the next look
                if known and (verdict.backend == "process" or _gil_free(m)):
                    self.judge.adopt(verdict)
                    return True
            window *= 2
            if wait([probe], timeout=window)[0]:
                outcomes, wall, cpu = probe.result()
                if states_seen == {"running"}:
                    # Runnable at every look, never blocked: the time it did
                    # not run was the host's (other work on the cores), not
                    # waiting; an estimate must not count it as waiting.
                    cpu = wall
                elif cpu < WAITING * wall:
                    # It finished without being seen to wait (or only for the
                    # GIL): one item on a busy machine or beside a computing
                    # thread proves nothing; time a few more inline.
                    self.tiny(first, (outcomes, wall, cpu))
                    return False
                self.note_transfer(first, _value(outcomes[0]))
                self.judge.adopt(choose(self.judge.measure(wall, cpu, 1), self.stream.left()))
                return False

    def tiny(self, first: list[Any], result: ChunkResult) -> None:
        outcomes, wall, cpu = result
        self.note_transfer(first, _value(outcomes[0]))
        # Time more items inline, where a small item's cost is seen exactly.
        items, spent_wall, spent_cpu = 1, wall, cpu
        deadline = time.perf_counter() + INLINE_PROBE_S
        chunks, own, calmest = 0, 0.0, math.inf  # calmest: least wall per CPU second
        # A few chunks at least, while they cost little: beside a computing
        # thread, waits for the GIL can take the whole window.
        while time.perf_counter() < deadline or (
            chunks < INLINE_PROBE_CHUNKS and own < INLINE_PROBE_S
        ):
            chunks += 1
            chunk = self.stream.cursor.take(max(1, items))
            if not chunk:
                break
            done, taken = self.placement.run_inline(chunk, self.stream)
            _, w, c = done.result()
            self.stream.inflight.add(done, taken, "inline")
            items += taken
            spent_wall += w
            spent_cpu += c
            own += c
            calmest = min(calmest, w / max(c, 1e-9))
            self.judge.measure(spent_wall, spent_cpu, items)  # later chunks run at this pace
        if calmest < math.inf:
            # Items that wait, wait in every chunk; a chunk the host's other
            # work preempted is slow once. The calmest chunk tells which.
            spent_wall = min(spent_wall, spent_cpu * max(1.0, calmest))
        self.judge.adopt(
            choose(self.judge.measure(spent_wall, spent_cpu, items), self.stream.left())
        )


def _gil_test(probe: Future[Any], clock: _ThreadClock) -> float | None:
    """CPU seconds per wall second of this thread and the probe's together,
    while this thread computes in Python beside the running probe for up to
    PROBE_WAIT_S; None if the probe ended too soon to tell.

    Well over one CPU means the item ran while this thread held the GIL:
    it releases the GIL. Each thread's own CPU clock is read, not the
    process's: Linux updates the process clock for a thread running on
    another core only at the next tick, which a 2 ms window can miss.
    (This thread spins, not a second item on a thread: an item that holds
    the GIL would run here long after processes took the rest.)
    """
    now_wall, own_cpu = time.perf_counter, time.thread_time
    wall0, mine0, probe0 = now_wall(), own_cpu(), clock.used()
    now, deadline = wall0, wall0 + PROBE_WAIT_S
    while now < deadline and not probe.done():
        now = now_wall()
    span, mine, theirs = now - wall0, own_cpu() - mine0, clock.used() - probe0
    if span < PROBE_WAIT_S / 2 or clock.clock is None:
        return None
    least = min(mine, theirs) / span
    # Sharing the GIL, each thread gets about half the window; without it,
    # both run through it. Only both running through proves the GIL free
    # (one clock read late cannot); one that hardly ran (the probe ending
    # and waiting for the GIL to return, a thread not scheduled on a busy
    # host) tells nothing.
    if least >= 0.75:
        return (mine + theirs) / span
    if least >= 0.25:
        return min(1.0, (mine + theirs) / span)
    return None


class _Judge:
    """What a run has measured and what it decided from that.

    ``stats`` are the Measurements so far; ``decisions`` every Decision in
    order (the last is current). A change of backend takes two verdicts in a
    row (``pending_switch``): one odd chunk does not move the work. The
    caller's worker count and chunk size, if given, apply to every decision.
    """

    def __init__(self, workers: int | None, chunksize: int | None, forced: str | None) -> None:
        self.workers = workers
        self.chunksize = chunksize  # every chunk this size (workers and threads), if given
        self.forced = forced  # a backend given by the caller or CONCUR_BACKEND
        self.cores = cpu_count()
        self.gil = gil_enabled()
        self.stats: Measurements | None = None
        self.decisions: list[Decision] = []
        self.pending_switch: str | None = None
        self.utilization: float | None = None
        self.transfer = 0.0
        self.clock = (time.perf_counter(), time.process_time())

    @property
    def decision(self) -> Decision | None:
        return self.decisions[-1] if self.decisions else None

    def measure(self, wall: float, cpu: float, items: int) -> Measurements:
        m = Measurements(
            items=items,
            wall=wall / items,
            cpu=cpu / items,
            transfer=self.transfer,
            utilization=self.utilization,
            cores=self.cores,
            gil=self.gil,
        )
        self.stats = m
        return m

    def sized(self, decision: Decision) -> Decision:
        """The decision with the caller's worker count and chunk size, if given."""
        if decision.backend == "inline":
            return decision
        if self.forced is None and self.workers is not None:
            decision = replace(decision, workers=self.workers)
        if self.chunksize is not None:
            decision = replace(decision, chunksize=self.chunksize)
        return decision

    def adopt(self, decision: Decision) -> None:
        decision = self.sized(decision)
        previous = self.decision
        self.decisions.append(decision)
        if previous is None:
            log.info("concur auto: %s", decision)
        elif previous.backend != decision.backend:
            log.info("concur auto: the work changed; now %s", decision)

    def process_utilization(self) -> float | None:
        """Process CPU seconds per wall second since the last reading, once
        at least 50 ms have passed (shorter windows are noise)."""
        now = (time.perf_counter(), time.process_time())
        span = now[0] - self.clock[0]
        if span < 0.05:
            return None
        used = now[1] - self.clock[1]
        self.clock = now
        return used / span

    def observe(
        self,
        count: int,
        wall: float,
        cpu: float,
        backend: str,
        left: int | None,
        more_input: bool,
        warm: bool,
    ) -> None:
        """Fold a finished chunk into the averages; switch backend if the work changed."""
        if count == 0:
            return
        per_wall, per_cpu = wall / count, cpu / count
        if backend == "thread":
            # Busy threads share the GIL, so each one's wall time overstates
            # waiting. The whole process's CPU rate tells the truth: near one
            # core means the work computes; above 1.3 means the GIL is released.
            rate = self.process_utilization()
            if rate is not None and rate > GIL_FREE_UTILIZATION:
                self.utilization = rate
            # Near one busy core, and items that do compute (sleepers use
            # ~0.01% CPU; items sharing the GIL with up to 100 others, 1% or more).
            if rate is not None and rate > 0.8 and per_cpu > 0.01 * per_wall:
                per_wall = per_cpu
        old = self.stats or Measurements(cores=self.cores, gil=self.gil, transfer=self.transfer)
        # Each chunk is a few milliseconds of work: weigh chunks, not items, so
        # a change shows within a couple of chunks however many items came before.
        weight = 0.5 if old.items else 1.0
        m = replace(
            old,
            items=old.items + count,
            wall=(1 - weight) * old.wall + weight * per_wall,
            cpu=(1 - weight) * old.cpu + weight * per_cpu,
            utilization=self.utilization,
            warm=warm,
        )
        self.stats = m
        if self.forced is not None or not more_input:
            # The backend stays as given, or every item left is already placed:
            # a new verdict could move nothing (and near the end the estimates
            # converge, so it would only mislabel the run).
            return
        self.redecide(choose(m, left))

    def redecide(self, verdict: Decision) -> None:
        current = self.decision
        assert current is not None
        if verdict.backend == current.backend:
            self.pending_switch = None
            verdict = self.sized(verdict)
            if verdict.workers > current.workers or verdict.chunksize != current.chunksize:
                self.decisions[-1] = verdict  # same backend, better sizing
            return
        if self.pending_switch == verdict.backend:
            self.pending_switch = None
            self.adopt(verdict)
        else:
            self.pending_switch = verdict.backend


class AutoMap(Stream):
    """The stream behind ``backend="auto"``: the engine, driven by an
    ``_AutoPlacement`` that decides, runs and re-decides.

    ``decision`` is the current Decision; ``decisions`` every one in order.
    """

    placement: _AutoPlacement

    def __init__(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        workers: int | None = None,
        forced_backend: str | None = None,
        options: TaskOptions | None = None,
        timeout: float | None = None,
        chunksize: int | None = None,
        max_inflight: int | None = None,
    ) -> None:
        placement = _AutoPlacement(fn, workers, forced_backend, options, chunksize, max_inflight)
        super().__init__(
            iterables,
            placement,
            ordered=ordered,
            return_exceptions=return_exceptions,
            timeout=timeout,
        )
        # One iterable: items stay as they are, so inline calls are plain fn(x).
        placement.call = fn if self.cursor.single else _starred(fn)

    @property
    def decision(self) -> Decision | None:
        return self.placement.judge.decision

    @property
    def decisions(self) -> list[Decision]:
        return self.placement.judge.decisions


class _AutoPlacement:
    """Where auto runs each chunk: the probe first, then what the judge
    decided (inline here, threads or processes), re-decided after each chunk."""

    def __init__(
        self,
        fn: Callable[..., Any],
        workers: int | None,
        forced_backend: str | None,
        options: TaskOptions | None,
        chunksize: int | None,
        max_inflight: int | None,
    ) -> None:
        self.fn = fn
        self.call: Callable[[Any], Any] = fn
        self._max_inflight = max_inflight
        self._options = options or TaskOptions()
        self._threads: ThreadPool | None = None
        self._processes: ProcessPool | None = None
        self._fn_blob: bytes | None = None
        self._watchdog = _Watchdog()
        self.judge = _Judge(workers, chunksize, forced_backend or environment_override())
        if self.judge.forced is not None:
            source = "backend=" if forced_backend else "CONCUR_BACKEND"
            self.judge.adopt(forced(self.judge.forced, source, workers))

    def start(self, stream: Stream) -> None:
        if self.judge.decision is None:
            _Probe(stream, self).run()

    def limit(self) -> int:
        d = self.judge.decision
        assert d is not None
        limit = 1
        if d.backend == "process":
            limit = 2 * d.workers
        elif d.backend == "thread":
            limit = d.workers + 1
        return limit if self._max_inflight is None else min(limit, self._max_inflight)

    def chunk_size(self, stream: Stream) -> int | None:
        d = self.judge.decision
        assert d is not None
        if d.backend == "inline" and stream.inflight.pending(skip_tag="inline"):
            return None  # let pool work drain before running inline in this thread
        if d.chunksize:
            return d.chunksize
        if self.judge.stats is None:
            return 1
        return _chunk(self.judge.stats, stream.left() or 1_000_000, d.backend)

    def place(self, chunk: list[Any], stream: Stream) -> tuple[Future[ChunkResult], int, str]:
        d = self.judge.decision
        assert d is not None
        if d.backend == "inline":
            done, taken = self.run_inline(chunk, stream)
            _, wall, cpu = done.result()
            self._observe(taken, wall, cpu, "inline", stream)  # now: the next chunk may differ
            return done, taken, "inline"
        options = self._options.for_chunk(len(chunk))
        items = stream.cursor.as_args(chunk)
        if d.backend == "thread":
            future = self.thread_pool().submit_chunk(self.fn, items, None, options)
        else:
            processes = self._process_pool()
            if self._fn_blob is None:
                self._fn_blob = processes.prepare_fn(self.fn)
            future = processes.submit_chunk(self.fn, items, self._fn_blob, options)
        return future, len(chunk), d.backend

    def observe(self, count: int, wall: float, cpu: float, tag: str, stream: Stream) -> None:
        # Inline chunks were observed as they ran; the probe item was measured
        # by the probe (beside a spinner that contends for the GIL on purpose).
        if tag not in ("inline", "probe"):
            self._observe(count, wall, cpu, tag, stream)

    def _observe(self, count: int, wall: float, cpu: float, tag: str, stream: Stream) -> None:
        warm = self._processes is not None
        left, more = stream.left(), stream.cursor.has_input()
        self.judge.observe(count, wall, cpu, tag, left, more, warm)

    def run_inline(self, chunk: list[Any], stream: Stream) -> tuple[_Done, int]:
        return _run_inline(self.call, chunk, self._watchdog, stream.cursor)

    def thread_pool(self) -> ThreadPool:
        if self._threads is None:
            self._threads = ThreadPool(THREAD_BOUND, thread_name_prefix="concur-auto-thread")
        return self._threads

    def _process_pool(self) -> ProcessPool:
        if self._processes is None:
            d = self.judge.decision
            workers = d.workers if d is not None and d.backend == "process" else self.judge.cores
            from .processes import ProcessPool  # only now: the inline path needs none of it

            self._processes = ProcessPool(workers)
        return self._processes

    def release(self, abort: bool, settled: bool) -> None:
        """Stop the pools this run started."""
        for pool in (self._threads, self._processes):
            if pool is None:
                continue
            if abort:
                pool.abort()
            else:
                # Idle threads need no waiting for: told to exit, they are gone
                # within a moment, and joining them would add a context switch
                # each to every run. Processes are always waited for.
                idle_threads = pool is self._threads and settled
                pool.shutdown(wait=not idle_threads, cancel_futures=True)
        self._threads = self._processes = None
        self._watchdog.stop(wait=not settled)


def _run_inline(
    call: Callable[[Any], Any], chunk: list[Any], watchdog: _Watchdog, cursor: Cursor
) -> tuple[_Done, int]:
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
    watchdog.arm(items, len(chunk), time.perf_counter() + 4 * CHUNK_TARGET_S["inline"])
    # After arm: its first call starts the watchdog's thread, no cost of the items.
    wall0, cpu0, process0 = time.perf_counter(), time.thread_time(), time.process_time()
    try:
        values.extend(map(call, items))
    except Exception as exc:
        outcomes: list[_task.Outcome] = [(_task.OK, v) for v in values]
        outcomes.append((_task.RAISED, exc))
        cursor.push_back(chunk[len(outcomes) :])
        return _Done((outcomes, *_spent(wall0, cpu0, process0))), len(outcomes)
    finally:
        watchdog.disarm()
    cursor.push_back(chunk[len(values) :])
    return _Done((values, *_spent(wall0, cpu0, process0))), len(values)


def _spent(wall0: float, cpu0: float, process0: float) -> tuple[float, float]:
    """Wall and CPU seconds of a chunk that ran here, less the time other
    threads of the program computed meanwhile: while another thread holds
    the GIL this one cannot run, and that is neither what the items cost
    nor a wait that more threads could fill (they would need the GIL too)."""
    wall = time.perf_counter() - wall0
    own = time.thread_time() - cpu0
    others = max(0.0, time.process_time() - process0 - own)
    return max(own, wall - others), own


def _value(outcome: _task.Outcome) -> Any:
    return outcome[1] if outcome[0] == _task.OK else None


def advise(fn: Callable[..., Any], sample: Iterable[Any], *more: Iterable[Any]) -> Decision:
    """Run ``fn`` over ``sample`` the way auto would; return the Decision for a long run.

    The sample really runs (side effects happen); its results are discarded.
    The Decision applies what every sampled item showed to a run of many such
    items. Give it enough items to be typical; a few dozen is usually plenty.
    """
    stream = AutoMap(fn, (sample, *more), return_exceptions=True)
    try:
        stream.to_list()
    finally:
        stream.close()
    decision = stream.decision
    assert decision is not None
    stats = stream.placement.judge.stats
    if stats is None or decision.source != "measured":
        return decision
    # Everything the sample taught, applied to a long run of such items.
    return choose(stats, None)


# -- AutoPool: the same choice for submit() --------------------------------------


class _Route:
    """What AutoPool has learned about one function."""

    __slots__ = ("decision", "stats")

    def __init__(self) -> None:
        self.stats: Measurements | None = None
        self.decision: Decision | None = None


class AutoPool(_pool_base.PoolBase):
    """An Executor that decides, per function, where ``submit`` runs it.

    A function's first calls run on threads (nothing to pickle, and the
    thread's CPU clock measures them exactly); after ``LEARN_CALLS`` calls
    its Decision routes later calls inline, to threads or to processes, and
    keeps being updated as calls finish. ``decision`` is the latest Decision;
    ``decisions`` maps each function's name to its own. ``map`` and ``imap``
    decide per run, as ``concur.map`` does, on this pool's workers.
    """

    _kind = "thread"
    LEARN_CALLS = 3

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers must be an int >= 1, not {max_workers!r}")
        self._max_workers = max_workers or cpu_count()
        self._workers_given = max_workers
        self._defaults = TaskOptions()
        self._threads = ThreadPool(THREAD_BOUND, thread_name_prefix="concur-AutoPool-thread")
        self._processes: ProcessPool | None = None
        self._routes: dict[Any, _Route] = {}
        self._lock = threading.Lock()
        self._clock = (time.perf_counter(), time.process_time())
        self._forced = environment_override()
        self.decision: Decision | None = None
        self.decisions: dict[str, Decision] = {}

    def _route(self, fn: Callable[..., Any]) -> _Route:
        key = getattr(fn, "__code__", None) or fn
        with self._lock:
            route = self._routes.get(key)
            if route is None:
                route = self._routes[key] = _Route()
                if self._forced is not None:
                    self._set(fn, route, forced(self._forced, "CONCUR_BACKEND"))
            return route

    def _set(self, fn: Callable[..., Any], route: _Route, decision: Decision) -> None:
        changed = route.decision is None or route.decision.backend != decision.backend
        route.decision = decision
        self.decision = decision
        self.decisions[_task.describe(fn)] = decision
        if changed:
            log.info("concur auto: %s → %s", _task.describe(fn), decision)

    def _submit_with(
        self,
        options: TaskOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[Any]:
        route = self._route(fn)
        call = functools.partial(fn, **kwargs) if kwargs else fn
        backend = route.decision.backend if route.decision else "thread"
        outer: Future[Any] = Future()
        if backend == "inline":
            outer.set_running_or_notify_cancel()
            outcomes, wall, cpu = _task.run_chunk(call, [args], False)
            self._learn(fn, route, args, outcomes[0], wall, cpu, "inline")
            _pool_base.settle_outcome(outer, outcomes[0])
            return outer
        if backend == "process":
            pool: ThreadPool | ProcessPool = self._process_pool()
            blob = pool.prepare_fn(call)
        else:
            pool, blob = self._threads, None
        inner = pool.submit_chunk(call, [args], blob, options)

        def finished(done: Future[ChunkResult]) -> None:
            if outer.cancelled():
                return
            try:
                outcomes, wall, cpu = done.result()
            except BaseException as exc:
                _pool_base.settle(outer, error=exc)
                return
            self._learn(fn, route, args, outcomes[0], wall, cpu, backend)
            _pool_base.settle_outcome(outer, outcomes[0])

        outer.set_running_or_notify_cancel()
        inner.add_done_callback(finished)
        return outer

    def _learn(
        self,
        fn: Callable[..., Any],
        route: _Route,
        args: tuple[Any, ...],
        outcome: _task.Outcome,
        wall: float,
        cpu: float,
        backend: str,
    ) -> None:
        with self._lock:
            if self._forced is not None:
                return
            if backend == "thread":
                now = (time.perf_counter(), time.process_time())
                span, used = now[0] - self._clock[0], now[1] - self._clock[1]
                self._clock = now
                if span > 0 and used / span > 0.8:  # the GIL is busy: the work computes
                    wall = cpu
            old = route.stats or Measurements(
                cores=cpu_count(),
                gil=gil_enabled(),
                transfer=_transfer_cost(args, _value(outcome)),
            )
            weight = 1.0 / (old.items + 1) if old.items < 8 else 0.2
            route.stats = replace(
                old,
                items=old.items + 1,
                wall=(1 - weight) * old.wall + weight * wall,
                cpu=(1 - weight) * old.cpu + weight * cpu,
                warm=self._processes is not None,
            )
            items = route.stats.items
            # Re-decide often while learning, then every 16th call: cheap calls stay cheap.
            if items >= self.LEARN_CALLS and (items < 50 or items % 16 == 0):
                verdict = choose(route.stats, None)
                if verdict.backend == "thread":
                    verdict = replace(verdict, chunksize=1)
                self._set(fn, route, verdict)

    def _process_pool(self) -> ProcessPool:
        with self._lock:
            if self._processes is None:
                from .processes import ProcessPool

                self._processes = ProcessPool(self._max_workers)
            return self._processes

    def submit_chunk(
        self,
        fn: Callable[..., Any],
        items: list[tuple[Any, ...]],
        fn_blob: bytes | None,
        options: TaskOptions,
    ) -> Future[ChunkResult]:
        return self._threads.submit_chunk(fn, items, fn_blob, options)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: Any = "auto",
    ) -> Iterator[Any]:
        """Decide for this run by measuring it, as ``concur.map`` does, on at
        most ``max_workers`` workers, in chunks of ``chunksize`` if it is given."""
        timeout = _pool_base.check_timeout(timeout)
        stream = AutoMap(
            fn,
            iterables,
            forced_backend=self._forced,
            timeout=timeout,
            workers=self._workers_given,
            chunksize=_fixed_chunksize(chunksize),
        )
        return _TrackedMap(stream, self)

    def imap(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: Any = "auto",
        return_exceptions: bool = False,
        max_inflight: int | None = None,
    ) -> Iterator[Any]:
        if max_inflight is not None and (not isinstance(max_inflight, int) or max_inflight < 1):
            raise ValueError(f"max_inflight must be an int >= 1, not {max_inflight!r}")
        stream = AutoMap(
            fn,
            iterables,
            ordered=ordered,
            return_exceptions=return_exceptions,
            forced_backend=self._forced,
            workers=self._workers_given,
            chunksize=_fixed_chunksize(chunksize),
            max_inflight=max_inflight,
        )
        return _TrackedMap(stream, self)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._threads.shutdown(wait, cancel_futures=cancel_futures)
        if self._processes is not None:
            self._processes.shutdown(wait, cancel_futures=cancel_futures)

    def abort(self) -> None:
        self._threads.abort()
        if self._processes is not None:
            self._processes.abort()


def _fixed_chunksize(chunksize: Any) -> int | None:
    """None for "auto" (auto sizes chunks), else the size, checked as the pools check it."""
    return _pool_base.ChunkSizer(chunksize, 1, "thread").fixed


class _TrackedMap(Iterator[Any]):
    """An AutoMap whose decision also shows on the AutoPool that started it."""

    def __init__(self, stream: AutoMap, pool: AutoPool) -> None:
        self.stream = stream
        self.pool = pool

    @property
    def decision(self) -> Decision | None:
        return self.stream.decision

    def __iter__(self) -> _TrackedMap:
        return self

    def __next__(self) -> Any:
        try:
            return next(self.stream)
        finally:
            if self.stream.decision is not None:
                self.pool.decision = self.stream.decision

    def close(self) -> None:
        self.stream.close()
