"""What a pool did: each worker's start-up, idle and working time, and its slowest tasks.

Both pools keep a ``Recorder``; ``pool.stats()`` returns its ``PoolStats``.

    worker start ──► ready ──► task ──► task ──► ... ──► exit
    |-- startup_s --|         |wall|   |wall|           (working_s = sum of walls,
                                                          idle_s = the rest)

On the hot path (one call per finished task) it adds to three numbers and,
only when the task is slower than the slowest ones kept, touches a heap of
``SLOWEST`` entries. Exited workers stay in a bounded history
(``HISTORY`` workers), so a crashed or retired worker can still be seen.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

SLOWEST = 10  # tasks kept, by wall time
HISTORY = 64  # exited workers kept


class Labelled(Protocol):
    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class WorkerStats:
    """One worker's life so far, as ``pool.stats()`` reports it.

    ``startup_s`` runs from the worker's start to its being ready (its
    initializer done); ``working_s`` is the sum of its tasks' wall times
    (a task it runs now counts up to now); ``idle_s`` is the rest of
    ``alive_s``. ``cpu_s`` is the CPU time its tasks used. ``exit`` is None
    while it lives, else how it ended ("crashed: was killed by SIGKILL",
    "retired: exited with code 0", "shut down: ...").
    """

    name: str
    pid: int
    ident: int | None  # a thread's ident; a process's pid
    tasks_done: int
    startup_s: float
    working_s: float
    idle_s: float
    alive_s: float
    cpu_s: float
    busy: bool
    exit: str | None
    exitcode: int | None


@dataclass(frozen=True)
class TaskStat:
    """One of the slowest tasks: its label, wall and CPU seconds, and its worker."""

    label: str
    wall_s: float
    cpu_s: float
    worker: str
    pid: int


@dataclass(frozen=True)
class PoolStats:
    """What a pool did: ``workers`` (live ones first, then exited ones, at
    most the last ``HISTORY`` of those), the ``slowest`` tasks (slowest
    first), and totals over every worker the pool started."""

    kind: str
    workers: tuple[WorkerStats, ...]
    slowest: tuple[TaskStat, ...]
    workers_started: int
    tasks_done: int
    working_s: float
    idle_s: float
    startup_s: float

    def __str__(self) -> str:
        return self.table()

    def table(self) -> str:
        """The stats as text a person can read."""
        lines = [
            f"{self.kind} pool: {self.workers_started} worker(s) started, "
            f"{self.tasks_done} task(s) done, working {self.working_s:.3f} s, "
            f"idle {self.idle_s:.3f} s, starting {self.startup_s:.3f} s",
            f"{'worker':<28} {'pid':>7} {'tasks':>6} {'start s':>8} {'work s':>8} "
            f"{'idle s':>8} {'cpu s':>8}  state",
        ]
        for w in self.workers:
            state = w.exit or ("busy" if w.busy else "alive")
            lines.append(
                f"{w.name[-28:]:<28} {w.pid:>7} {w.tasks_done:>6} {w.startup_s:>8.3f} "
                f"{w.working_s:>8.3f} {w.idle_s:>8.3f} {w.cpu_s:>8.3f}  {state}"
            )
        if self.slowest:
            lines.append("slowest tasks:")
            for t in self.slowest:
                lines.append(
                    f"  {t.wall_s:>8.3f} s wall {t.cpu_s:>8.3f} s cpu  {t.label}  "
                    f"(on {t.worker}, pid {t.pid})"
                )
        return "\n".join(lines)

    @classmethod
    def combine(cls, kind: str, parts: list[PoolStats]) -> PoolStats:
        """Several pools' stats as one (AutoPool's threads and processes)."""
        slowest = sorted((t for p in parts for t in p.slowest), key=lambda t: -t.wall_s)
        return cls(
            kind,
            tuple(w for p in parts for w in p.workers),
            tuple(slowest[:SLOWEST]),
            sum(p.workers_started for p in parts),
            sum(p.tasks_done for p in parts),
            sum(p.working_s for p in parts),
            sum(p.idle_s for p in parts),
            sum(p.startup_s for p in parts),
        )


class WorkerRecord:
    """One worker's running totals (the recorder's lock guards them)."""

    __slots__ = (
        "cpu",
        "ended",
        "exit",
        "exitcode",
        "ident",
        "name",
        "pid",
        "ready",
        "started",
        "tasks",
        "working",
    )

    def __init__(self, name: str, pid: int, ident: int | None, started: float) -> None:
        self.name = name
        self.pid = pid
        self.ident = ident
        self.started = started
        self.ready: float | None = None
        self.ended: float | None = None
        self.tasks = 0
        self.working = 0.0
        self.cpu = 0.0
        self.exit: str | None = None
        self.exitcode: int | None = None


class Recorder:
    """A pool's bookkeeping for ``stats()``; safe to call from any thread."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._lock = threading.Lock()
        self._live: dict[int, WorkerRecord] = {}  # by id(): records are not hashable by value
        self._history: deque[WorkerRecord] = deque(maxlen=HISTORY)
        self._slowest: list[tuple[float, int, float, str, str, int]] = []  # a min-heap
        self._order = itertools.count()  # ties in the heap never compare labels
        self._started = 0
        self._gone = [0, 0.0, 0.0, 0.0]  # tasks, working, idle, startup of dropped workers

    def started(self, record: WorkerRecord) -> None:
        """Count a new worker in (its record's ``started`` is when it began)."""
        with self._lock:
            self._live[id(record)] = record
            self._started += 1

    def ready(self, record: WorkerRecord, ident: int | None = None) -> None:
        if record.ready is None:
            record.ready = time.monotonic()
            if ident is not None:
                record.ident = ident

    def done(
        self, record: WorkerRecord, task: Labelled, items: int, wall: float, cpu: float
    ) -> None:
        """A task finished on the worker, after ``wall`` seconds (``cpu`` of CPU)."""
        with self._lock:
            record.tasks += items
            record.working += wall
            record.cpu += cpu
            heap = self._slowest
            if len(heap) < SLOWEST:
                entry = (wall, next(self._order), cpu, task.label, record.name, record.pid)
                heapq.heappush(heap, entry)
            elif wall > heap[0][0]:
                entry = (wall, next(self._order), cpu, task.label, record.name, record.pid)
                heapq.heapreplace(heap, entry)

    def ended(
        self,
        record: WorkerRecord,
        exit: str,
        exitcode: int | None = None,
        busy_since: float | None = None,
    ) -> None:
        """The worker is gone; ``busy_since`` when a task it held died with it."""
        now = time.monotonic()
        with self._lock:
            if self._live.pop(id(record), None) is None:
                return
            if busy_since is not None:
                record.working += max(0.0, now - busy_since)
            record.ended, record.exit, record.exitcode = now, exit, exitcode
            if len(self._history) == HISTORY:
                dropped = _row(self._history[0], now, None)
                self._gone[0] += dropped.tasks_done
                self._gone[1] += dropped.working_s
                self._gone[2] += dropped.idle_s
                self._gone[3] += dropped.startup_s
            self._history.append(record)

    def snapshot(self, busy: dict[int, float] | None = None) -> PoolStats:
        """The stats now; ``busy`` maps a live record's id() to when the task
        it runs started, so that task counts as working."""
        now = time.monotonic()
        busy = busy or {}
        with self._lock:
            records = [*self._live.values(), *self._history]
            rows = [_row(r, now, busy.get(id(r))) for r in records]
            slowest = sorted(self._slowest, reverse=True)
            started, gone = self._started, list(self._gone)
        return PoolStats(
            self.kind,
            tuple(rows),
            tuple(
                TaskStat(label, wall, cpu, name, pid) for wall, _, cpu, label, name, pid in slowest
            ),
            started,
            int(gone[0]) + sum(r.tasks_done for r in rows),
            gone[1] + sum(r.working_s for r in rows),
            gone[2] + sum(r.idle_s for r in rows),
            gone[3] + sum(r.startup_s for r in rows),
        )


def _row(record: WorkerRecord, now: float, busy_since: float | None) -> WorkerStats:
    end = record.ended if record.ended is not None else now
    alive = max(0.0, end - record.started)
    startup = (record.ready if record.ready is not None else end) - record.started
    working = record.working
    if busy_since is not None:
        working += max(0.0, now - busy_since)
    return WorkerStats(
        name=record.name,
        pid=record.pid,
        ident=record.ident,
        tasks_done=record.tasks,
        startup_s=startup,
        working_s=working,
        idle_s=max(0.0, alive - startup - working),
        alive_s=alive,
        cpu_s=record.cpu,
        busy=busy_since is not None,
        exit=record.exit,
        exitcode=record.exitcode,
    )
