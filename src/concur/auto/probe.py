"""How a run starts: item 0 runs on a thread while the caller watches it.

``Probe`` tells waiting from computing by the probe thread's own CPU clock
and its state in /proc (``ThreadClock``), and GIL-releasing code from
GIL-holding code by a short spin beside it (``_gil_test``). Whatever it
finds becomes the run's first Decision on the ``Judge``.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import struct
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

from .. import _cputime, _gil, _shm, _task
from .._pool import ChunkResult
from .._stream import Chunk, Stream, Values
from .rules import (
    GIL_FREE_UTILIZATION,
    INLINE_ITEM_S,
    INLINE_PROBE_CHUNKS,
    INLINE_PROBE_S,
    LONG_RUN,
    PARALLEL_TEST_S,
    PARALLEL_TEST_WORK_S,
    PROBE_WAIT_S,
    PROCESS_START_S,
    THREAD_BOUND,
    WAITING,
    Decision,
    Measurements,
    choose,
    gil_free,
)

if TYPE_CHECKING:
    from .engine import AutoPlacement
    from .judge import Judge


# Seconds per byte to write a large buffer into shared memory (one memory
# copy, a few GB/s): what such a buffer costs a process, instead of a pickle.
SHARED_COPY_S_PER_BYTE = 0.3e-9


def transfer_cost(args: tuple[Any, ...], result: Any) -> float:
    """Seconds to send the arguments and the result once each: pickling all
    but their large buffers, plus one copy of those (see ``_shm``)."""
    start = time.perf_counter()
    try:
        shared = _shared_bytes(args) + _shared_bytes(result)
    except Exception:
        return math.inf  # cannot be pickled: processes are out
    return time.perf_counter() - start + shared * SHARED_COPY_S_PER_BYTE


def _shared_bytes(obj: Any) -> int:
    """Pickle ``obj`` as a process pool sends it; the bytes of the buffers
    that would go through shared memory (written nowhere here)."""
    out = _shm.Outgoing()
    out.placement = None
    _task.dumps(_shm.lift(obj), out)
    return sum(raw.nbytes for _, raw in out.new)


class ThreadClock:
    """Reads another thread's CPU time while it runs a call (``run``).

    ``time.pthread_getcpuclockid`` names the running thread's CPU clock; where
    it is missing, the process's CPU time stands in (the caller only waits).
    Until a thread picks the call up, it has used nothing and counts as
    ready to run: a thread the host has not scheduled yet is not waiting.
    """

    def __init__(self) -> None:
        self.clock: int | None = None
        self.start = 0.0
        self.fallback = time.process_time()
        self.tid: int | None = None
        self.ident = 0  # the thread's, for what was computed elsewhere for it
        self.elsewhere0 = (0.0, 0.0, 0.0)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.ident, self.elsewhere0 = threading.get_ident(), _cputime.elsewhere()
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
        """CPU seconds the call used so far, with what processes computed
        for it (a call that runs its own map: ``_cputime``)."""
        if self.tid is None:
            return 0.0  # not started
        elsewhere = _cputime.computed_elsewhere(self.elsewhere0, _cputime.elsewhere(self.ident))
        if self.clock is not None:
            try:
                return time.clock_gettime(self.clock) - self.start + elsewhere
            except OSError:
                pass
        return time.process_time() - self.fallback + elsewhere

    def state(self) -> str | None:
        """What the thread does right now (Linux: from /proc): "running"
        (or ready to), "lock" (blocked on a futex: waiting for the GIL or a
        lock), "sleep" (in a timed sleep), "io" (blocked in any other call: a
        read, a poll), or None where that cannot be read.

        Low CPU over wall time alone cannot tell a thread that waits from one
        that is ready but not scheduled on a busy machine, nor from one that
        waits for the GIL while another thread of the program computes; the
        state can.
        """
        if self.tid is None:
            return "running"  # queued: no thread has run it yet
        task = f"/proc/self/task/{self.tid}"
        try:
            with open(f"{task}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            return None
        after_name = stat.rfind(b")") + 2  # the name may hold spaces and brackets
        if stat[after_name : after_name + 1] not in (b"S", b"D"):
            return "running"
        return _blocked_in(task)


# The numbers of futex and of the sleep calls, where the thread's current
# call is read by number. A 32-bit interpreter makes 32-bit calls whatever
# the kernel (futex_time64 and clock_nanosleep_time64 since Linux 5.1).
_CALLS_64 = {
    "x86_64": ({202}, {35, 230}),
    "aarch64": ({98}, {101, 115}),
    "riscv64": ({98}, {101, 115}),
}
_CALLS_32 = {
    "x86": ({240, 422}, {162, 267, 407}),
    "arm": ({240, 422}, {162, 265, 407}),
}
_MACHINE = platform.machine()
if struct.calcsize("P") == 8:
    _CALLS = _CALLS_64.get(_MACHINE)
else:
    _FAMILY = "arm" if _MACHINE.startswith(("arm", "aarch64")) else _MACHINE
    _CALLS = _CALLS_32.get("x86" if _FAMILY in ("i386", "i686", "x86_64") else _FAMILY)


def _blocked_in(task: str) -> str:
    """What a blocked thread waits in: "lock" (futex: the GIL, a lock, a
    condition), "sleep" (a timed sleep) or "io" (any other call: a socket,
    a pipe, a file, a poll)."""
    try:
        with open(f"{task}/syscall", "rb") as handle:
            number = handle.read().split(maxsplit=1)[0]
        if _CALLS is not None and number.isdigit():
            futexes, sleeps = _CALLS
            call = int(number)
            return "lock" if call in futexes else "sleep" if call in sleeps else "io"
    except (OSError, IndexError):
        pass
    try:  # the kernel function it sleeps in
        with open(f"{task}/wchan", "rb") as handle:
            where = handle.read()
    except OSError:
        return "io"
    return "lock" if b"futex" in where else "sleep" if b"nanosleep" in where else "io"


class Probe:
    """How a run starts: item 0 runs on a thread while this thread watches.

    Done within PROBE_WAIT_S: a small item, timed further inline (``tiny``).
    Still running: waiting or computing is told from the probe thread's own
    CPU clock and state, and whether it holds the GIL from a short spin
    beside it (``long``). Either way the run adopts its first Decision.
    """

    def __init__(self, stream: Stream, placement: AutoPlacement) -> None:
        self.stream = stream
        self.placement = placement
        self.judge = placement.judge
        # The process's and this thread's CPU clocks when the probe began:
        # what other threads of the program computed meanwhile (``others_busy``).
        self.clocks = (time.perf_counter(), time.process_time(), time.thread_time())

    def note_transfer(self, first: Chunk, result: Any) -> None:
        cost = transfer_cost(self.stream.cursor.as_args(first)[0], result)
        self.judge.transfer = cost if self.placement.callable_travels() else math.inf

    def run(self) -> None:
        first = self.stream.cursor.take(1)
        if not first:
            self.judge.adopt(Decision("inline", 1, 1, "no items"))
            return
        if was_tiny(self.placement.fn):
            # Its last run's items were tiny: time this one inline too, where
            # handing it to a probe thread would cost more than it (beside a
            # thread that computes, a GIL switch each way).
            ran, taken = self.placement.run_inline(first, self.stream)
            self.stream.inflight.add(ran, taken, "inline")
            values, wall, cpu = ran.result()
            if isinstance(values, Values):  # all went well: as the outcomes a thread reports
                values = [(_task.OK, value) for value in values]
            result = (values, wall, cpu)
            if wall < PROBE_WAIT_S:
                self.tiny(first, result)
                return
            # No longer tiny: decide from this item, timed whole, rather than
            # run more of them here (a wait would hold the caller each time).
            self.note_transfer(first, value_of(values[0]))
            self.parallel_test(self.judge.measure(wall, cpu, 1), 0.0)  # its CPU: this thread's
            self.judge.adopt(choose(self.judge.measure(wall, cpu, 1), self.stream.left()))
            return
        threads = self.placement.thread_pool()
        # A computing probe holds the GIL against this thread (which must look
        # at it on time) and against a process pool starting up: shorten the
        # switch interval until the probe items end (see _gil).
        fast = _gil.Hold()
        wall0 = time.perf_counter()
        clock = ThreadClock()
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
        first: Chunk,
        probe: Future[Any],
        clock: ThreadClock,
        wall0: float,
    ) -> bool:
        """Item 0 is still running after PROBE_WAIT_S: waiting or computing?
        Decides, and returns whether item 0 computes (holds a CPU, maybe the GIL)."""
        self.note_transfer(first, None)
        window = PROBE_WAIT_S
        states_seen: set[str] = set()  # "running", "lock", "sleep", "io" at the looks
        spins = SpinTest()
        while True:
            elapsed = time.perf_counter() - wall0
            used = clock.used()  # the probe thread's own CPU time: others' load is not in it
            busy = used / max(elapsed, 1e-9)
            state = clock.state()
            if state in ("io", "sleep") and _cputime.is_streaming(clock.ident):
                state = "lock"  # it waits for its own map's chunks: computing elsewhere
            if state is not None:
                states_seen.add(state)
            if state in ("io", "sleep"):  # a socket, pipe or file ramps up (see ramp)
                self.judge.outside = state == "io"
            # Blocked on a lock is no proof of waiting: it is where a thread
            # waits for the GIL while another thread of the program computes.
            if busy < WAITING and state in ("io", "sleep", None):
                # Waiting, for an unknown time yet: the ratio measured so far is
                # only a lower bound, so allow as many threads as that bound
                # asks; what waits on the outside world ramps up to them.
                m = self.judge.measure(elapsed, min(used, elapsed / THREAD_BOUND), 1)
                self.judge.adopt(choose(m, self.stream.left()))
                return False
            left = self.stream.left()
            work_left = elapsed * (LONG_RUN if left is None else left)
            # Computing, or ready to compute on a host too busy to run it
            if (busy >= WAITING or state == "running") and work_left >= PROCESS_START_S:
                # Computing, and enough of it for parallel work to matter.
                if self.judge.utilization is None:
                    self.judge.utilization = spins.look(probe, clock)
                # Only a lower bound so far: act on it when even that pays for
                # processes, or for threads because the GIL is released. Any
                # other verdict waits for the finished item (a bound measured
                # beside the spinner understates the CPU share).
                m = self.judge.measure(elapsed, used, 1)
                verdict = choose(m, left)
                known = self.judge.utilization is not None  # else: maybe test at the next look
                if known and (verdict.backend == "process" or gil_free(m)):
                    self.judge.adopt(verdict)
                    return True
            window *= 2
            if wait([probe], timeout=window)[0]:
                self.finished(first, probe.result(), states_seen, spins.unclear)
                return False

    def finished(
        self, first: Chunk, result: ChunkResult, states_seen: set[str], unclear: bool
    ) -> None:
        """Item 0 ended before a verdict: decide from its whole run.
        ``unclear``: a spin test beside it found the host too busy to tell;
        the parallel test would be no clearer, and the GIL counts as held."""
        outcomes, wall, cpu = result
        if states_seen == {"running"}:
            # Runnable at every look, never blocked: the time it did not run
            # was the host's (other work on the cores), not the item's
            # (the rule ``_cputime.spent`` applies to every chunk).
            wall = cpu
        elif cpu < WAITING * wall:
            # It finished without being seen to wait (or only for the GIL):
            # one item on a busy machine or beside a computing thread proves
            # nothing; time a few more inline.
            self.tiny(first, (outcomes, wall, cpu))
            return
        self.note_transfer(first, value_of(outcomes[0]))
        if not unclear:
            self.parallel_test(self.judge.measure(wall, cpu, 1), cpu)
        self.judge.adopt(choose(self.judge.measure(wall, cpu, 1), self.stream.left()))

    def tiny(self, first: Chunk, result: ChunkResult) -> None:
        outcomes, wall, cpu = result
        self.note_transfer(first, value_of(outcomes[0]))
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
        self.parallel_test(self.judge.measure(spent_wall, spent_cpu, items), cpu)
        self.judge.adopt(
            choose(self.judge.measure(spent_wall, spent_cpu, items), self.stream.left())
        )

    def others_busy(self, probe_cpu: float) -> bool:
        """Whether another thread of the program computed through much of
        the probe (a monitor, a UI): all CPU the process used since it began
        but this thread's and the probe item's (``probe_cpu``)."""
        wall0, process0, thread0 = self.clocks
        others = time.process_time() - process0 - (time.thread_time() - thread0) - probe_cpu
        return others > 0.25 * (time.perf_counter() - wall0)

    def parallel_test(self, m: Measurements, probe_cpu: float) -> None:
        """Whether computing items release the GIL, seen by their progress:
        one chunk per core (PARALLEL_TEST_S of CPU each) runs on threads at
        once (``parallel_round``).

        Run when the GIL is unknown and the computing left (PARALLEL_TEST_WORK_S
        or more) is worth a second core. It costs nothing to speak of: items
        that hold the GIL take turns on the threads about as fast as inline.
        More than GIL_FREE_UTILIZATION CPUs used proves the GIL released.
        Fewer prove nothing alone: the host may have run both threads on one
        core for a while (it does, for a few ms after waking them). Threads
        that take turns for the GIL block on it; so a round in which no
        thread ever blocked (``_cputime.spent`` reports its wall time as its CPU
        time) shows the GIL released. GIL-free items may block once where
        two end at once, so the GIL counts as held only after a second
        round shows no more. Not run beside another thread that computes
        (``others_busy``): there every thread blocks to get the GIL back,
        and each hand-off among three takes a switch interval.
        """
        judge, left = self.judge, self.stream.left()
        n = LONG_RUN if left is None else left
        if (
            not judge.gil
            or judge.utilization is not None
            or judge.cores < 2
            or m.wait_fraction >= WAITING
            or n * m.wall < PARALLEL_TEST_WORK_S
            # Items cheaper than their trip through a thread's chunk (an
            # argument tuple and an outcome each): no C call that short gains
            # from releasing the GIL, and the test would cost more than them.
            or m.cpu < INLINE_ITEM_S
            # Only where the verdict matters: items too small for a thread
            # (beside a computing thread, each hand-off costs a GIL switch)
            # stay inline whatever it says.
            or choose(dataclasses.replace(m, released=True), left).backend != "thread"
            or self.others_busy(probe_cpu)
        ):
            return
        size = max(1, math.ceil(PARALLEL_TEST_S / max(m.cpu, 1e-9)))
        for _ in range(2):
            results = parallel_round(self.placement, self.stream, judge.cores, size, m.wall)
            if results is None:
                return
            span, used, side_by_side, chunks = results
            reading = used / span
            judge.utilization = max(reading, judge.utilization or 0.0)
            if reading > GIL_FREE_UTILIZATION:
                return
            never_blocked = all(wall == cpu for _, wall, cpu in chunks)
            if side_by_side and never_blocked and _cputime.blocking_counted():
                judge.released = True
                return


# Functions whose last settled run was all tiny items, inline (``note_run``).
_tiny_last_time: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def was_tiny(fn: Callable[..., Any]) -> bool:
    try:
        return _tiny_last_time.get(getattr(fn, "__func__", fn), False)
    except TypeError:  # not weakly referable: never remembered
        return False


def note_run(fn: Callable[..., Any], judge: Judge) -> None:
    """After a run that ended well: remember whether ``fn``'s items were
    tiny and ran inline, so that its next run times item 0 inline too. An
    item that is heavy after all costs the caller that one item, once."""
    d, m = judge.decision, judge.stats
    tiny = d is not None and d.backend == "inline" and m is not None and m.wall < INLINE_ITEM_S
    key = getattr(fn, "__func__", fn)  # a bound method is made anew at each access
    try:
        if tiny and judge.forced is None:
            _tiny_last_time[key] = True
        else:
            _tiny_last_time.pop(key, None)
    except TypeError:  # not weakly referable (a builtin of some kinds)
        pass


def parallel_round(
    placement: AutoPlacement, stream: Stream, cores: int, size: int, wall: float
) -> tuple[float, float, bool, list[ChunkResult]] | None:
    """One chunk of ``size`` items per core on threads at once: the wall
    time they took together, this process's CPU time meanwhile (the GIL
    is its own, whatever the items computed elsewhere), whether they ran
    side by side (each through 3/4 of the others' time at least: a thread
    started late proves nothing) and their results; None if too few items
    are left or an item ran far longer than those measured."""
    left = stream.left()
    if left is not None:
        size = min(size, left // cores)
    if size < 1:
        return None
    threads, cursor, fn = placement.thread_pool(), stream.cursor, placement.fn
    futures: list[Future[ChunkResult]] = []
    spans: list[tuple[float, float]] = []
    start, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(cores):
        chunk = cursor.take(size)
        future = threads.submit(_timed_chunk, fn, cursor.as_args(chunk), spans)
        stream.inflight.add(future, len(chunk), "probe")
        futures.append(future)
    done, _ = wait(futures, timeout=max(0.05, 10 * size * wall))
    if len(done) < cores:
        return None
    together = min(end for _, end in spans) - max(begin for begin, _ in spans)
    side_by_side = together >= 0.75 * min(end - begin for begin, end in spans)
    span, used = time.perf_counter() - start, time.process_time() - cpu0
    return span, used, side_by_side, [future.result() for future in futures]


def _timed_chunk(
    fn: Callable[..., Any], items: list[tuple[Any, ...]], spans: list[tuple[float, float]]
) -> ChunkResult:
    """``_task.run_chunk`` on a thread, noting when it began and ended."""
    begin = time.perf_counter()
    try:
        return _task.run_chunk(fn, items, False)
    finally:
        spans.append((begin, time.perf_counter()))


class SpinTest:
    """Spins beside a running probe (``_gil_test``), three at most (each
    costs the probe CPU): a verdict once one saw the GIL released, or two
    saw it held. One held reading is not enough: a probe whose C call ended
    in the window waits for the GIL the spinner holds, as held code does.
    ``unclear``: a window in which the probe ran on but a thread hardly ran
    (a busy host)."""

    def __init__(self) -> None:
        self.tries = 0
        self.held = 0
        self.unclear = False

    def look(self, probe: Future[Any], clock: ThreadClock) -> float | None:
        if self.tries >= 3:
            return None
        self.tries += 1
        reading = _gil_test(probe, clock)
        self.unclear = self.unclear or (reading is None and not probe.done())
        if reading is None or reading > GIL_FREE_UTILIZATION:
            return reading
        self.held += 1
        return reading if self.held >= 2 else None


def _gil_test(probe: Future[Any], clock: ThreadClock) -> float | None:
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
    mine, theirs = own_cpu() - mine0, clock.used() - probe0
    # The window ends after both clocks are read: this thread may be
    # preempted between reads while the probe runs on, and a window that
    # ended before the last read would credit the probe with more CPU time
    # than wall time.
    span = now_wall() - wall0
    if probe.done() or clock.clock is None:
        return None  # it ended in the window: not seen running beside the spin
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


def value_of(outcome: _task.Outcome) -> Any:
    return outcome[1] if outcome[0] == _task.OK else None
