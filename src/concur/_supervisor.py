"""A process pool's supervision: the state callers and the supervisor share,
and the supervisor thread that starts, watches, answers and reaps workers.

    caller threads ── PoolState (one lock) ── Supervisor thread
      submit: idle worker? send                 select() on every worker's reply
              else queue in pending             pipe, its exit (pidfd) and a
      result: read the worker's reply           wake-up pipe; then deadlines
              here (_replies)                   READY / DONE / LOG / INIT_FAILED
      cancel: kill the worker holding it        (_replies.take, either reader)
      shutdown: closing, wake                   exit: reap, fail its task only

Invariants the supervisor keeps:

* a reply settles the task the worker holds only if the reply names it
  (the task id travels in a binary header, outside the pickle);
* no future stays pending: every failure while handling one worker's reply
  or exit (an outcome that cannot be unpickled, a callback that raises,
  even ``SystemExit``) fails at most that task; a failure of the loop itself
  breaks the pool, which fails every task it holds;
* a worker that dies before it said READY breaks the pool at once (its
  start, not a task, failed: re-starting it would only fail again), with the
  reason the worker gave when it had one (its initializer's exception). One
  whose initializer failed breaks it when it has exited, as the standard
  library's pool does, so what it flushes on exit (a multiprocessing queue a
  log handler writes to) is there when callers see the pool broken;
* a task's time limit counts from when its worker is ready; a worker that
  is not ready when the limit passes breaks the pool, naming the initializer.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing.context
import os
import signal
import threading
import time
from collections import deque
from typing import Any

from . import (
    _future,
    _gil,
    _logs,
    _pool,
    _replies,
    _sigmask,
    _stats,
    _supervise,
    _task,
    _wire,
    _worker,
    _workerproc,
)
from ._replies import send
from ._workerproc import WorkerProcess
from .errors import (
    ProcessPoolBroken,
    TaskTimeout,
    WorkerCrashed,
    exit_description,
)

# How long a worker asked to exit gets before it is terminated, then killed.
EXIT_GRACE_S = _replies.EXIT_GRACE_S
# How long a timed-out worker gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 0.2
FAST_START_S = 0.5  # longest the switch interval stays short for a worker start

EXIT_MESSAGE = _task.task_message(_task.EXIT, 0)
_log = logging.getLogger("concur")

_WAKE, _REPLY, _EXIT = 0, 1, 2


class Task:
    """One submitted call or chunk, as the pool tracks it.

    It keeps the task's label, not its function, so a finished future
    holds on to nothing the caller passed in. ``keep`` holds the shared
    memory its message refers to, for as long as the task lives.
    """

    __slots__ = (
        "deadline",
        "future",
        "id",
        "items",
        "keep",
        "label",
        "payload",
        "retries",
        "timeout",
        "worker",
    )

    def __init__(
        self,
        task_id: int,
        future: _future.RunningFuture,
        payload: _task.Payload,
        label: str,
        items: int,
        options: _pool.TaskOptions,
    ) -> None:
        self.id = task_id
        self.future = future
        self.payload, self.keep = payload
        self.label = label
        self.items = items
        self.timeout = options.timeout
        self.retries = options.retries
        self.deadline: float | None = None
        self.worker: WorkerProcess | None = None  # the last worker it was given to


class PoolState:
    """What callers and the supervisor share; ``lock`` guards every field.

    Pipes are written outside the lock: a worker is written to only by
    whoever just gave it a task, so writes never interleave. Futures are
    settled outside the lock too, because settling runs callbacks.
    """

    def __init__(
        self,
        ctx: multiprocessing.context.BaseContext,
        max_workers: int,
        name: str,
        settings: _worker.Settings,
        initializer: _worker.Initializer | None,
    ) -> None:
        self.ctx = ctx
        self.max_workers = max_workers
        self.name = name
        self.settings = settings  # its title is the pool's; each worker adds its name
        self.initializer = initializer
        self.lock = threading.Lock()
        self.pending: deque[Task] = deque()  # submitted, waiting for a worker
        self.idle: list[WorkerProcess] = []  # ready for a task
        self.workers: dict[int, WorkerProcess] = {}  # every live worker, by pid
        self.closing = False  # shutdown() was called
        self.broken: BaseException | None = None  # why the pool cannot run tasks
        self.owner = os.getpid()  # the process that may use the pool
        self.thread: threading.Thread | None = None  # the supervisor's, once started
        self.watch: _replies.Watch | None = None  # the supervisor's poll, once it runs
        self.stats = _stats.Recorder("process")  # what pool.stats() reports
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"!")
        except OSError:
            pass  # a wake-up is already pending, or the pool is closed

    def drain_wake(self) -> None:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass

    def wants_worker(self) -> bool:
        with self.lock:
            live = sum(1 for w in self.workers.values() if not w.stopping)
            failing = any(w.failure is not None for w in self.workers.values())
            return not (self.broken or failing) and bool(self.pending) and live < self.max_workers

    def close_wake(self) -> None:
        with self.lock:
            if self.wake_r < 0:
                return
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.wake_r = self.wake_w = -1

    def assign(self, worker: WorkerProcess, task: Task) -> None:
        """Give ``task`` to ``worker`` (lock held); its clock starts now."""
        now = time.monotonic()
        worker.task = task
        task.worker = worker
        worker.task_started = now
        task.deadline = None if task.timeout is None else now + task.timeout

    def next_task(self) -> Task | None:
        """Pop the next pending task that was not cancelled (lock held)."""
        while self.pending:
            task = self.pending.popleft()
            # A retried task is already running as far as its future knows.
            if task.future.running() or task.future.set_running_or_notify_cancel():
                return task
        return None

    def stop_worker(self, worker: WorkerProcess, graceful: bool) -> None:
        """SIGTERM with a grace period, or SIGKILL now (lock held)."""
        worker.stopping = True
        if worker in self.idle:
            self.idle.remove(worker)
        if graceful:
            worker.kill_at = time.monotonic() + STOP_GRACE_S
            worker.signal(signal.SIGTERM)
        else:
            worker.kill_at = None
            worker.signal(signal.SIGKILL)
        self.wake()

    def worker_ready(self, worker: WorkerProcess) -> Task | None:
        """The worker finished its set-up: a task to send it, if one waits."""
        with self.lock:
            worker.ready = True
            task = worker.task
            if task is not None:
                self.assign(worker, task)  # its clock restarts now that it can run
                return None
            if worker.stopping:
                return None
            task = self.next_task()
            if task is None:
                self.idle.append(worker)
            else:
                self.assign(worker, task)
            return task

    def task_done(
        self, worker: WorkerProcess, task_id: int, retiring: bool
    ) -> tuple[Task | None, Task | None]:
        """The worker answered ``task_id``: (that task, or None if it does not
        hold it; the next task to send it, if any)."""
        with self.lock:
            task = worker.task
            if task is None or task.id != task_id:
                return None, None
            worker.task = None
            worker.tasks_done += task.items
            worker.retiring = retiring
            following = None
            if not (retiring or worker.stopping):
                following = self.next_task()
                if following is not None:
                    self.assign(worker, following)
                else:
                    self.idle.append(worker)
            return task, following

    def worker_gone(self, worker: WorkerProcess) -> tuple[Task | None, bool]:
        """The worker exited (and was reaped): (the task its death failed, if
        any; whether it died before it was ready, which breaks the pool)."""
        with self.lock:
            del self.workers[worker.pid]
            if worker in self.idle:
                self.idle.remove(worker)
            task, worker.task = worker.task, None
            # A failed initializer breaks the pool however the worker ended
            # (even a pool closing, or a worker stopped for its task).
            early = worker.failure is not None or not (
                worker.ready or worker.stopping or self.closing or self.broken
            )
            if task is None or task.future.done():
                return None, early
            if early:
                self.pending.appendleft(task)  # break_pool fails it with the reason
                return None, True
            if task.retries > 0 and not worker.stopping and not self.closing:
                task.retries -= 1
                self.pending.appendleft(task)  # rerun on a fresh worker
                return None, False
            return task, False

    def break_pool(self, error: BaseException) -> None:
        """No task can run any more: fail every queued and running one."""
        with self.lock:
            if self.broken is None:
                self.broken = error
            tasks = list(self.pending) + [w.task for w in self.workers.values() if w.task]
            self.pending.clear()
            for worker in self.workers.values():
                worker.task = None
        for task in tasks:
            _future.settle(task.future, error=error)
        self.wake()


class Supervisor:
    """The thread that runs a pool's workers; one per pool, started on demand.

    It alone starts workers (``PR_SET_PDEATHSIG`` ties them to this thread,
    which lives as long as the pool), reads their replies and reaps them.
    """

    def __init__(self, state: PoolState) -> None:
        self.state = state
        self.watch = _replies.Watch()
        self.watch.register(state.wake_r, (_WAKE, None))
        state.watch = self.watch
        self.worker_ids = itertools.count()
        self.fast: _gil.Hold | None = None  # a shorter switch interval, while starting
        self.first_due: set[int] = set()  # new workers whose first reply has not come
        self.fast_until = 0.0  # ... but the short interval ends by then at the latest
        self.thread = threading.Thread(
            target=self.run, name=f"concur-{state.name}-supervisor", daemon=True
        )

    def run(self) -> None:
        # Signals are the main thread's (see _sigmask); children start with
        # the mask _workerproc.start gives them.
        _sigmask.hold_in_this_thread()
        try:
            while not self.finished():
                self.grow()
                self.round(self.watch.select(self.next_timeout()))
                self.enforce_deadlines()
        except BaseException as exc:  # a bug in concur: fail loudly, leave no child
            self.state.break_pool(
                ProcessPoolBroken(f"the pool's supervisor failed: {type(exc).__name__}: {exc}")
            )
            raise
        finally:
            self.first_due.clear()
            self.started()
            self.stop_workers()
            self.close()

    def round(self, ready: list[tuple[int, Any]]) -> None:
        replies: list[WorkerProcess] = []
        exits: list[WorkerProcess] = []
        for tag, worker in ready:
            if tag == _WAKE:
                self.state.drain_wake()
            elif tag == _REPLY:
                replies.append(worker)
            else:
                exits.append(worker)
        for worker in replies:
            self.on_reply(worker)
        for worker in exits:
            self.on_exit(worker)
        if self.fast is not None:
            self.first_due.difference_update(w.pid for w in (*replies, *exits))
            self.started()

    def finished(self) -> bool:
        state = self.state
        with state.lock:
            if state.broken is not None:
                return True
            busy = any(w.task is not None and not w.stopping for w in state.workers.values())
            return state.closing and not state.pending and not busy

    def next_timeout(self) -> float | None:
        """Seconds until the next deadline or pending SIGKILL, or None."""
        with self.state.lock:
            times = [
                w.kill_at
                if w.stopping or w.failure is not None
                else (w.task.deadline if w.task else None)
                for w in self.state.workers.values()
            ]
        due = [t for t in times if t is not None]
        if self.fast is not None:
            due.append(self.fast_until)
        return None if not due else max(0.0, min(due) - time.monotonic())

    def enforce_deadlines(self) -> None:
        state = self.state
        now = time.monotonic()
        expired: list[tuple[Task, WorkerProcess]] = []
        with state.lock:
            for worker in state.workers.values():
                if worker.kill_at is not None and worker.kill_at <= now:
                    worker.kill_at = None
                    worker.signal(signal.SIGKILL)
                if worker.stopping or worker.failure is not None:
                    continue
                task = worker.task
                if task is not None and task.deadline is not None and task.deadline <= now:
                    expired.append((task, worker))
                    state.stop_worker(worker, graceful=True)
        for task, worker in expired:
            assert task.timeout is not None
            if not worker.ready:
                self.state.break_pool(_start_timeout(state, task.timeout))
            else:
                _future.settle(task.future, error=TaskTimeout(task.label, task.timeout, worker.pid))

    def grow(self) -> None:
        if not self.state.wants_worker():
            return
        # Every step of a start, and the first reply, would otherwise wait out
        # the switch interval while the caller's threads compute (see _gil).
        if self.fast is None:
            self.fast = _gil.Hold()
        self.fast_until = time.monotonic() + FAST_START_S
        while self.state.wants_worker():
            try:
                worker = self.start_worker()
            except Exception as exc:
                self.state.break_pool(
                    ProcessPoolBroken(
                        f"a worker process could not be started: {type(exc).__name__}: {exc}"
                    )
                )
                break
            with self.state.lock:
                self.state.workers[worker.pid] = worker
                task = self.state.next_task()
                if task is not None:
                    self.state.assign(worker, task)
            if task is not None:
                self.first_due.add(worker.pid)
                send(worker, task)
        self.started()

    def started(self) -> None:
        """Once no new worker's first reply is due (or its time is up), the
        switch interval goes back to the caller's."""
        if self.fast is not None and time.monotonic() >= self.fast_until:
            self.first_due.clear()  # a first task that runs long keeps no one waiting
        if not self.first_due and self.fast is not None:
            self.fast.release()
            self.fast = None

    def start_worker(self) -> WorkerProcess:
        state = self.state
        name = f"{state.name}-worker-{next(self.worker_ids)}"
        settings = state.settings
        settings = _worker.Settings(
            f"concur-worker {name}",
            settings.max_tasks,
            settings.max_memory,
            None if settings.log_levels is None else _logs.levels(),
            settings.cpu_budget,
        )
        began = time.monotonic()
        worker = _workerproc.start(state.ctx, name, settings, state.initializer)
        worker.record.started = began
        state.stats.started(worker.record)
        self.watch.register(worker.rx.fileno(), (_REPLY, worker))
        self.watch.register(worker.exit_fd, (_EXIT, worker))
        worker.watched = True
        return worker

    # -- messages from a worker ------------------------------------------------

    def on_reply(self, worker: WorkerProcess) -> None:
        if not worker.reader.acquire(blocking=False):
            return  # a caller reads this pipe (and muted it)
        try:
            # The poll may have reported a reply a caller read meanwhile.
            settle = self.read_one(worker) if _readable(worker.rx) else None
        finally:
            worker.reader.release()
        if settle is not None:
            settle()

    def read_one(self, worker: WorkerProcess) -> _replies.Settle | None:
        """Read and apply one reply (``worker.reader`` held)."""
        try:
            data = _wire.recv(worker.rx_fd)
        except (EOFError, OSError):
            self.unwatch(worker, worker.rx.fileno())
            return None  # it died mid-reply; its exit reports the death
        return _replies.take(self.state, worker, data)

    def on_exit(self, worker: WorkerProcess) -> None:
        state = self.state
        if worker.pid not in state.workers:
            return
        settles = []
        with worker.reader:  # a caller reading the pipe lets go once it sees the exit
            while not worker.rx.closed and self.watch.watching(worker.rx.fileno()):
                if worker.stop_hint is _replies.TORN or not _readable(worker.rx):
                    break  # (a torn pipe holds the rest of a reply, not a reply)
                settles.append(self.read_one(worker))  # a last reply that raced with the exit
            self.unwatch(worker, worker.rx.fileno(), worker.exit_fd)
            pid = worker.pid
            exitcode = worker.reap()
        _record_exit(state, worker, exitcode)
        for settle in settles:
            if settle is not None:
                settle()
        crash, early = state.worker_gone(worker)
        if early:
            state.break_pool(worker.failure or _start_failure(state, pid, exitcode))
        elif crash is not None:
            error = WorkerCrashed(pid, exitcode, crash.label, hint=worker.stop_hint)
            _future.settle(crash.future, error=error)

    def unwatch(self, worker: WorkerProcess, *fds: int) -> None:
        with self.state.lock:
            worker.watched = False
        for fd in fds:
            self.watch.unregister(fd)

    def stop_workers(self) -> None:
        state = self.state
        with state.lock:
            workers = list(state.workers.values())
            state.workers.clear()
            state.idle.clear()
        for worker in workers:
            with worker.reader:  # no caller reads a pipe about to close
                self.unwatch(worker, worker.rx.fileno(), worker.exit_fd)
        codes = _workerproc.stop_all(workers, EXIT_MESSAGE, EXIT_GRACE_S)
        for worker, code in zip(workers, codes, strict=True):
            state.stats.ended(worker.record, f"shut down: {exit_description(code)}", code)

    def close(self) -> None:
        self.watch.close()
        self.state.close_wake()


def _record_exit(state: PoolState, worker: WorkerProcess, exitcode: int | None) -> None:
    """Put the worker's end in the pool's stats: why, how, and the time a task
    that died with it ran."""
    with state.lock:
        held = worker.task is not None and worker.ready
        busy_since = worker.task_started if held else None
        if worker.failure is not None:
            why = "initializer failed"
        elif worker.retiring:
            why = "retired"
        elif worker.stopping:
            why = "stopped by the pool"
        elif state.closing or state.broken:
            why = "shut down"
        else:
            why = "crashed"
    state.stats.ended(worker.record, f"{why}: {exit_description(exitcode)}", exitcode, busy_since)


def _start_failure(state: PoolState, pid: int, exitcode: int | None) -> BaseException:
    if exitcode == _supervise.MAIN_GUARD_EXIT:
        return _supervise.main_guard_error("A concur.ProcessPool")
    init = state.initializer
    doing = f"while its initializer {_task.describe(init.fn)} ran" if init else "while starting"
    return ProcessPoolBroken(
        f"worker process {pid} {exit_description(exitcode)} {doing}, before it was ready; "
        "the pool cannot start workers and does not retry (each new worker would fail "
        "the same way). Its own error, if it printed one, is on stderr above."
    )


def _start_timeout(state: PoolState, limit: float) -> ProcessPoolBroken:
    init = state.initializer
    what = (
        f"its initializer {_task.describe(init.fn)} was still running"
        if init is not None
        else "it was still starting"
    )
    return ProcessPoolBroken(
        f"a worker was not ready within its task's {limit:g} s time limit: {what}. "
        "Make the initializer finish, or raise the time limit, and create a new pool."
    )


def _readable(conn: Any) -> bool:
    try:
        return bool(conn.poll(0))
    except (OSError, EOFError):
        return False
