"""How a run starts: item 0 runs on a thread while the caller watches it.

``Probe`` tells waiting from computing by the probe thread's own CPU clock
and its state in /proc (``ThreadClock``), and GIL-releasing code from
GIL-holding code by a short spin beside it (``_gil_test``). Whatever it
finds becomes the run's first Decision on the ``Judge``.
"""

from __future__ import annotations

import math
import platform
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

from .. import _gil, _shm, _task
from .._pool import ChunkResult
from .._stream import Stream
from .rules import (
    INLINE_PROBE_CHUNKS,
    INLINE_PROBE_S,
    LONG_RUN,
    PROBE_WAIT_S,
    PROCESS_START_S,
    THREAD_BOUND,
    WAITING,
    Decision,
    choose,
    gil_free,
)

if TYPE_CHECKING:
    from .engine import AutoPlacement


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
        if self.tid is None:
            return 0.0  # not started
        if self.clock is not None:
            try:
                return time.clock_gettime(self.clock) - self.start
            except OSError:
                pass
        return time.process_time() - self.fallback

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

    def note_transfer(self, first: list[Any], result: Any) -> None:
        cost = transfer_cost(self.stream.cursor.as_args(first)[0], result)
        self.judge.transfer = cost if self.placement.callable_travels() else math.inf

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
        first: list[Any],
        probe: Future[Any],
        clock: ThreadClock,
        wall0: float,
    ) -> bool:
        """Item 0 is still running after PROBE_WAIT_S: waiting or computing?
        Decides, and returns whether item 0 computes (holds a CPU, maybe the GIL)."""
        self.note_transfer(first, None)
        window = PROBE_WAIT_S
        states_seen: set[str] = set()  # "running", "lock", "sleep", "io" at the looks
        gil_tests = 0
        while True:
            elapsed = time.perf_counter() - wall0
            used = clock.used()  # the probe thread's own CPU time: others' load is not in it
            busy = used / max(elapsed, 1e-9)
            state = clock.state()
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
                if known and (verdict.backend == "process" or gil_free(m)):
                    self.judge.adopt(verdict)
                    return True
            window *= 2
            if wait([probe], timeout=window)[0]:
                self.finished(first, probe.result(), states_seen)
                return False

    def finished(self, first: list[Any], result: ChunkResult, states_seen: set[str]) -> None:
        """Item 0 ended before a verdict: decide from its whole run."""
        outcomes, wall, cpu = result
        if states_seen == {"running"}:
            # Runnable at every look, never blocked: the time it did not run
            # was the host's (other work on the cores), not the item's
            # (the rule ``_task.spent`` applies to every chunk).
            wall = cpu
        elif cpu < WAITING * wall:
            # It finished without being seen to wait (or only for the GIL):
            # one item on a busy machine or beside a computing thread proves
            # nothing; time a few more inline.
            self.tiny(first, (outcomes, wall, cpu))
            return
        self.note_transfer(first, value_of(outcomes[0]))
        self.judge.adopt(choose(self.judge.measure(wall, cpu, 1), self.stream.left()))

    def tiny(self, first: list[Any], result: ChunkResult) -> None:
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
        self.judge.adopt(
            choose(self.judge.measure(spent_wall, spent_cpu, items), self.stream.left())
        )


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


def value_of(outcome: _task.Outcome) -> Any:
    return outcome[1] if outcome[0] == _task.OK else None
