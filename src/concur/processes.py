"""ProcessPool: a ``ProcessPoolExecutor`` that always knows what each worker holds.

    caller thread                     supervisor thread                worker process
    ─────────────                     ─────────────────                ──────────────
    submit(fn, *args)
      pickle the call (once) ──┐
      idle worker? ── yes ─────┼──────────── task pipe (one per worker) ──► run fn
                    no ─► pending deque                                        │
                               │      select() on every worker's              │
                               │      result pipe, process sentinel ◄─ result pipe
                               │      and a wake-up pipe
                               └────► on a reply: resolve the future,
                                      hand the worker the next pending task
                                      on a sentinel: reap the worker; fail only
                                      the task it held (WorkerCrashed); start a
                                      replacement when work is waiting

Every worker has its own pair of pipes and runs one task at a time, so a
worker that dies costs exactly the task it held, never the pool. The caller
writes straight to an idle worker's pipe, and one supervisor thread reads every
reply: a round trip crosses two processes and two threads, where the standard
library's crosses two queues, a feeder thread and a manager thread.

Workers start on demand (when a task waits and fewer than ``max_workers``
exist), always from the supervisor thread: it lives as long as the pool, which
``PR_SET_PDEATHSIG`` needs (see ``_supervise``).
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.context
import os
import selectors
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any, ParamSpec, TypeVar

from . import _gil, _pool, _supervise, _task, _worker
from ._exit import register_exit_hook
from .errors import (
    PoolClosed,
    ProcessPoolBroken,
    SerializationError,
    TaskTimeout,
    WorkerCrashed,
)
from .ps import WorkerInfo, parse_size, rss

P = ParamSpec("P")
R = TypeVar("R")

_pool_ids = itertools.count()
_task_ids = itertools.count()

# How long a worker asked to exit gets before it is terminated, then killed.
_EXIT_GRACE_S = 2.0
# How long a timed-out worker gets between SIGTERM and SIGKILL.
_STOP_GRACE_S = 0.2


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_start_method() -> str:
    """forkserver on Linux, spawn elsewhere (see docs/start-methods.md).

    ``fork`` copies the parent's threads' locks in whatever state they are in
    and is unsafe once any thread runs (a pool's supervisor always does);
    ``forkserver`` forks from a clean single-threaded server, so it is safe and
    starts workers several times faster than ``spawn``.
    """
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def get_context(
    mp_context: multiprocessing.context.BaseContext | str | None,
) -> multiprocessing.context.BaseContext:
    if mp_context is None:
        ctx = multiprocessing.get_context(default_start_method())
    elif isinstance(mp_context, str):
        ctx = multiprocessing.get_context(mp_context)
    else:
        ctx = mp_context
    if ctx.get_start_method() == "forkserver":
        _preload_in_forkserver(ctx)
    return ctx


def _preload_in_forkserver(ctx: multiprocessing.context.BaseContext) -> None:
    """Have the fork server import concur once, so each worker forks with it loaded.

    Adds to the server's preload list (by default ``["__main__"]``) and has no
    effect once the server runs. Saves each worker ~50 ms of imports.
    """
    import multiprocessing.forkserver as forkserver

    server = getattr(forkserver, "_forkserver", None)
    modules = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if "concur._worker" not in modules:
        ctx.set_forkserver_preload([*modules, "concur._worker"])


FAST_START_S = 0.5  # longest the switch interval stays short for a worker start


class _Task:
    __slots__ = ("chunk", "deadline", "fn", "future", "id", "payload", "retries", "timeout")

    def __init__(
        self,
        task_id: int,
        future: _pool.RunningFuture,
        payload: bytes,
        fn: object,
        chunk: bool,
        options: _pool.TaskOptions,
    ) -> None:
        self.id = task_id
        self.future = future
        self.payload = payload
        self.fn = fn
        self.chunk = chunk
        self.timeout = options.timeout
        self.retries = options.retries
        self.deadline: float | None = None

    @property
    def label(self) -> str:
        name = _task.describe(self.fn)
        return f"a chunk of {name}" if self.chunk else name


class _Worker:
    __slots__ = (
        "kill_at",
        "name",
        "pid",
        "process",
        "retiring",
        "rx",
        "sentinel",
        "stopping",
        "task",
        "task_started",
        "tasks_done",
        "tx",
    )

    def __init__(self, process: Any, tx: Connection, rx: Connection, name: str) -> None:
        self.process = process
        self.pid: int = process.pid
        self.sentinel: int = process.sentinel
        self.tx = tx
        self.rx = rx
        self.name = name
        self.task: _Task | None = None
        self.task_started = 0.0
        self.tasks_done = 0
        self.retiring = False  # will exit by itself after its current reply
        self.stopping = False  # being killed (timeout, cancel, abort)
        self.kill_at: float | None = None  # when SIGTERM turns into SIGKILL

    @property
    def state(self) -> str:
        if self.retiring or self.stopping:
            return "exiting"
        return "idle" if self.task is None else "busy"


_WAKE, _REPLY, _EXIT = 0, 1, 2


class _Core:
    """The pool's state, shared by callers and the supervisor thread.

    ``lock`` guards ``pending``, ``idle``, ``workers``, each worker's ``task``
    and flags, and the pool's flags. Pipes are written outside the lock: a
    worker is written to only by whoever just gave it a task, so writes
    never interleave. Futures are settled outside the lock too, because
    settling runs the caller's callbacks.
    """

    def __init__(
        self,
        ctx: multiprocessing.context.BaseContext,
        max_workers: int,
        init_blob: bytes | None,
        max_tasks: int | None,
        max_memory: int | None,
        name: str,
    ) -> None:
        self.ctx = ctx
        self.max_workers = max_workers
        self.init_blob = init_blob
        self.max_tasks = max_tasks
        self.max_memory = max_memory
        self.name = name
        self.lock = threading.Lock()
        self.pending: deque[_Task] = deque()
        self.idle: list[_Worker] = []
        self.workers: dict[int, _Worker] = {}
        self.closing = False
        self.broken: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.worker_ids = itertools.count()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.wake_r, selectors.EVENT_READ, (_WAKE, None))
        self.fast: _gil.Hold | None = None  # a shorter switch interval, while starting
        self.first_due: set[int] = set()  # new workers whose first reply has not come
        self.fast_until = 0.0  # ... but the short interval ends by then at the latest

    # -- called from any thread ---------------------------------------------

    def check_open(self) -> None:
        if self.broken is not None:
            raise self.broken
        if self.closing:
            raise PoolClosed("cannot schedule new futures after shutdown")

    def submit(self, task: _Task) -> None:
        task.future._stop = lambda: self.stop_task(task)
        with self.lock:
            self.check_open()
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self.run, name=f"concur-{self.name}-supervisor", daemon=True
                )
                self.thread.start()
            worker = self.idle.pop() if self.idle else None
            if worker is not None:
                task.future.set_running_or_notify_cancel()
                self.assign(worker, task)
            else:
                self.pending.append(task)
            wake = worker is None and len(self.workers) < self.max_workers
        if worker is not None:
            self.send(worker, task)
        if wake or task.deadline is not None:
            self.wake()  # start a worker, or wait for the new deadline

    def assign(self, worker: _Worker, task: _Task) -> None:
        """Give ``task`` to ``worker`` (lock held); its clock starts now."""
        now = time.monotonic()
        worker.task = task
        worker.task_started = now
        task.deadline = None if task.timeout is None else now + task.timeout

    def stop_task(self, task: _Task) -> bool:
        """Stop a running task for ``Future.cancel()``: kill the worker holding it."""
        with self.lock:
            if task in self.pending:  # waiting for a retry
                self.pending.remove(task)
                return True
            for worker in self.workers.values():
                if worker.task is task and not worker.stopping:
                    self.stop_worker(worker, graceful=False)
                    return True
        return False

    def stop_worker(self, worker: _Worker, graceful: bool) -> None:
        """SIGTERM with a grace period, or SIGKILL now (lock held).

        The supervisor reaps the worker when its sentinel fires and starts a
        replacement if work is waiting.
        """
        worker.stopping = True
        if worker in self.idle:
            self.idle.remove(worker)
        if graceful:
            worker.kill_at = time.monotonic() + _STOP_GRACE_S
            _signal(worker, signal.SIGTERM)
        else:
            worker.kill_at = None
            _signal(worker, signal.SIGKILL)
        self.wake()

    def shutdown(self, wait: bool, cancel_futures: bool, kill: bool = False) -> None:
        cancelled: list[_Task] = []
        with self.lock:
            self.closing = True
            if cancel_futures or kill:
                cancelled = list(self.pending)
                self.pending.clear()
            if kill:
                cancelled += [w.task for w in self.workers.values() if w.task is not None]
            thread = self.thread
        for task in cancelled:
            task.future.cancel()  # a running task's worker is killed
        if thread is None:
            self.close_fds()
            return
        self.wake()
        if wait and thread is not threading.current_thread():
            thread.join()

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"!")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or the pool is closed

    def send(self, worker: _Worker, task: _Task) -> None:
        try:
            worker.tx.send_bytes(task.payload)
        except OSError:
            pass  # the worker died; the supervisor sees its sentinel and fails the task

    def info(self) -> list[WorkerInfo]:
        now = time.monotonic()
        with self.lock:
            rows = [
                (w.name, w.pid, w.state, w.task, w.task_started, w.tasks_done)
                for w in self.workers.values()
            ]
        return [
            WorkerInfo(
                name=name,
                pid=pid,
                ident=pid,
                state=state,
                task_id=task.id if task else None,
                task=task.label if task else None,
                running_for=now - started if task else None,
                tasks_done=done,
                rss=rss(pid),
            )
            for name, pid, state, task, started, done in rows
        ]

    # -- the supervisor thread ----------------------------------------------

    def run(self) -> None:
        try:
            while not self.finished():
                self.grow()
                ready = self.selector.select(self.next_timeout())
                replies, exits = [], []
                for key, _ in ready:
                    tag, worker = key.data
                    if tag == _WAKE:
                        self.drain_wake()
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
                self.enforce_deadlines()
        except BaseException as exc:  # a bug in concur: fail loudly, leave no child
            self.break_pool(
                ProcessPoolBroken(f"the pool's supervisor failed: {type(exc).__name__}: {exc}")
            )
            raise
        finally:
            self.first_due.clear()
            self.started()
            self.stop_workers()
            self.close_fds()

    def finished(self) -> bool:
        with self.lock:
            if self.broken is not None:
                return True
            busy = any(w.task is not None and not w.stopping for w in self.workers.values())
            return self.closing and not self.pending and not busy

    def next_timeout(self) -> float | None:
        """Seconds until the next deadline or pending SIGKILL, or None."""
        with self.lock:
            times = [
                w.kill_at if w.stopping else (w.task.deadline if w.task else None)
                for w in self.workers.values()
            ]
        due = [t for t in times if t is not None]
        if self.fast is not None:
            due.append(self.fast_until)
        return None if not due else max(0.0, min(due) - time.monotonic())

    def enforce_deadlines(self) -> None:
        now = time.monotonic()
        expired: list[tuple[_Task, int]] = []
        with self.lock:
            for worker in self.workers.values():
                if worker.stopping:
                    if worker.kill_at is not None and worker.kill_at <= now:
                        worker.kill_at = None
                        _signal(worker, signal.SIGKILL)
                    continue
                task = worker.task
                if task is not None and task.deadline is not None and task.deadline <= now:
                    expired.append((task, worker.pid))
                    self.stop_worker(worker, graceful=True)
        for task, pid in expired:
            assert task.timeout is not None
            _pool.settle(task.future, error=TaskTimeout(task.label, task.timeout, pid))

    def drain_wake(self) -> None:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass

    def next_task(self) -> _Task | None:
        """Pop the next pending task that was not cancelled (lock held)."""
        while self.pending:
            task = self.pending.popleft()
            # A retried task is already running as far as its future knows.
            if task.future.running() or task.future.set_running_or_notify_cancel():
                return task
        return None

    def wants_worker(self) -> bool:
        with self.lock:
            live = sum(1 for w in self.workers.values() if not w.stopping)
            return not self.broken and bool(self.pending) and live < self.max_workers

    def grow(self) -> None:
        if not self.wants_worker():
            return
        # Every step of a start, and the first reply, would otherwise wait out
        # the switch interval while the caller's threads compute (see _gil).
        if self.fast is None:
            self.fast = _gil.Hold()
        self.fast_until = time.monotonic() + FAST_START_S
        while self.wants_worker():
            worker = self.start_worker()
            with self.lock:
                self.workers[worker.pid] = worker
                task = self.next_task()
                if task is None:
                    self.idle.append(worker)
                else:
                    self.assign(worker, task)
            if task is not None:
                self.first_due.add(worker.pid)
                self.send(worker, task)
        self.started()

    def started(self) -> None:
        """Once no new worker's first reply is due (or its time is up), the
        switch interval goes back to the caller's."""
        if self.fast is not None and time.monotonic() >= self.fast_until:
            self.first_due.clear()  # a first task that runs long keeps no one waiting
        if not self.first_due and self.fast is not None:
            self.fast.release()
            self.fast = None

    def start_worker(self) -> _Worker:
        number = next(self.worker_ids)
        name = f"{self.name}-worker-{number}"
        task_r, task_w = self.ctx.Pipe(duplex=False)
        result_r, result_w = self.ctx.Pipe(duplex=False)
        lifeline = Connection(os.dup(_supervise.lifeline_fd()), writable=False)
        limits = (self.max_tasks, self.max_memory)
        process = self.ctx.Process(  # type: ignore[attr-defined]
            target=_worker.main,
            args=(task_r, result_w, lifeline, f"concur-worker {name}", self.init_blob, limits),
            name=name,
        )
        try:
            process.start()
        finally:
            # The child has its copies; ours would hide its death from us.
            task_r.close()
            result_w.close()
            lifeline.close()
        worker = _Worker(process, task_w, result_r, name)
        self.selector.register(result_r.fileno(), selectors.EVENT_READ, (_REPLY, worker))
        self.selector.register(worker.sentinel, selectors.EVENT_READ, (_EXIT, worker))
        return worker

    def on_reply(self, worker: _Worker) -> None:
        try:
            data = worker.rx.recv_bytes()
        except (EOFError, OSError):
            self.unregister(worker.rx.fileno())
            return  # it died mid-reply; its sentinel reports the death
        try:
            task_id, outcome, wall, cpu, retiring = _task.loads(data)
        except Exception as exc:
            task_id, retiring, wall, cpu = 0, False, 0.0, 0.0
            error = SerializationError(
                f"the task's result could not be unpickled here: {type(exc).__name__}: {exc}",
                what="result",
            )
            outcome = (_task.RAISED, error)
        if task_id == _worker.INIT_FAILED:
            failure = _task.unpack_exception(outcome[1])
            self.break_pool(
                ProcessPoolBroken(
                    f"a worker's initializer failed ({type(failure).__name__}: {failure}); "
                    "the pool cannot run tasks. Fix the initializer and create a new pool."
                )
            )
            return
        with self.lock:
            task, worker.task = worker.task, None
            worker.tasks_done += 1
            worker.retiring = retiring
            following = None
            if not (retiring or worker.stopping):
                following = self.next_task()
                if following is not None:
                    self.assign(worker, following)
                else:
                    self.idle.append(worker)
        if following is not None:
            self.send(worker, following)
        if task is not None:
            _settle(task.future, outcome, wall, cpu)

    def on_exit(self, worker: _Worker) -> None:
        if worker.pid not in self.workers:
            return
        while not worker.rx.closed and _readable(worker.rx):
            self.on_reply(worker)  # a last reply that raced with the exit
            if worker.rx.fileno() not in self.selector.get_map():
                break
        self.unregister(worker.rx.fileno())
        self.unregister(worker.sentinel)
        worker.process.join()  # reaps it now: it already exited
        exitcode = worker.process.exitcode
        crash = None
        with self.lock:
            del self.workers[worker.pid]
            if worker in self.idle:
                self.idle.remove(worker)
            task, worker.task = worker.task, None
            if task is not None and not task.future.done():
                if task.retries > 0 and not worker.stopping and not self.closing:
                    task.retries -= 1
                    self.pending.appendleft(task)  # rerun on a fresh worker
                else:
                    crash = task
        worker.tx.close()
        worker.rx.close()
        worker.process.close()
        if crash is not None:
            error: BaseException = WorkerCrashed(worker.pid, exitcode, crash.label)
            if exitcode == _supervise.MAIN_GUARD_EXIT:
                error = _supervise.main_guard_error("A concur.ProcessPool")
                self.break_pool(error)
            _pool.settle(crash.future, error=error)

    def unregister(self, fd: int) -> None:
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def break_pool(self, error: BaseException) -> None:
        with self.lock:
            self.broken = error
            tasks = list(self.pending) + [w.task for w in self.workers.values() if w.task]
            self.pending.clear()
            for worker in self.workers.values():
                worker.task = None
        for task in tasks:
            _pool.settle(task.future, error=error)

    def stop_workers(self) -> None:
        with self.lock:
            workers = list(self.workers.values())
            self.workers.clear()
            self.idle.clear()
        for worker in workers:
            try:
                worker.tx.send_bytes(_EXIT_MESSAGE)
            except OSError:
                pass
        deadline = time.monotonic() + _EXIT_GRACE_S
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.process.exitcode is None:
                worker.process.terminate()
                worker.process.join(0.5)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            worker.tx.close()
            worker.rx.close()
            worker.process.close()

    def close_fds(self) -> None:
        with self.lock:
            if self.wake_r < 0:
                return
            self.selector.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.wake_r = self.wake_w = -1


_EXIT_MESSAGE = _task.dumps(None)


def _signal(worker: _Worker, sig: int) -> None:
    # The supervisor reaps workers only after their sentinel fired, so the pid
    # still names this worker (at worst a zombie, for which the signal is moot).
    try:
        os.kill(worker.pid, sig)
    except ProcessLookupError:
        pass


def _readable(conn: Connection) -> bool:
    try:
        return conn.poll(0)
    except (OSError, EOFError):
        return False


def _settle(future: Future[Any], outcome: _task.Outcome, wall: float, cpu: float) -> None:
    if outcome[0] == _task.CHUNK_DONE:
        _pool.settle(future, (outcome[1], wall, cpu))
    else:
        _pool.settle_outcome(future, outcome)


class ProcessPool(_pool.PoolBase):
    """A pool of worker processes; a drop-in for ``ProcessPoolExecutor``.

    Beyond the standard library: lambdas and closures work (cloudpickle), a
    worker's exception arrives with its own type and the worker's traceback,
    a worker that dies fails only its task (``WorkerCrashed``), tasks can
    have time limits that really stop them, a running task can be cancelled,
    workers never outlive the parent, and ``map``/``imap`` chunk small work
    automatically.

    ``task_timeout``: seconds a task may run (from when it starts) before its
    worker is stopped and the task fails with ``TaskTimeout``.
    ``retries``: how many times a task whose worker crashed is run again on
    a fresh worker. ``max_tasks_per_child`` and ``max_memory_per_child``
    (bytes, or a string such as ``"512MB"``; checked after each task) retire
    a worker gracefully and replace it. ``pool.options(...)`` overrides the
    task settings for some calls.
    """

    _kind = "process"

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: multiprocessing.context.BaseContext | str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | str | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
    ) -> None:
        _supervise.check_not_bootstrapping("A concur.ProcessPool")
        if max_workers is None:
            max_workers = cpu_count()
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None and (
            not isinstance(max_tasks_per_child, int) or max_tasks_per_child < 1
        ):
            raise ValueError("max_tasks_per_child must be an int >= 1")
        max_memory = None if max_memory_per_child is None else parse_size(max_memory_per_child)
        self._defaults = _pool.TaskOptions(task_timeout, retries)
        ctx = get_context(mp_context)
        init_blob = None
        if initializer is not None:
            init_blob = _task.serialize_call(0, initializer, initargs, {})
        self._max_workers = max_workers
        self._mp_context = ctx
        self._core = _Core(
            ctx,
            max_workers,
            init_blob,
            max_tasks_per_child,
            max_memory,
            f"ProcessPool-{next(_pool_ids)}",
        )
        # Collected without shutdown: finish the queued work, then stop.
        weakref.finalize(self, self._core.shutdown, False, False)
        register_exit_hook(self, ProcessPool._exit_hook)

    @property
    def start_method(self) -> str:
        """The multiprocessing start method the workers use."""
        return str(self._mp_context.get_start_method())

    def workers(self) -> list[WorkerInfo]:
        """Each worker now: pid, state, the task it runs and for how long, RSS."""
        return self._core.info()

    def _submit_with(
        self,
        options: _pool.TaskOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[Any]:
        return self._enqueue(
            lambda task_id: _task.serialize_call(task_id, fn, args, kwargs), fn, False, options
        )

    def _enqueue(
        self,
        payload_for: Callable[[int], bytes],
        fn: Callable[..., Any],
        chunk: bool,
        options: _pool.TaskOptions,
    ) -> _pool.RunningFuture:
        """Serialize a task here and now; one that cannot be fails its own future."""
        self._core.check_open()
        future = _pool.RunningFuture()
        task_id = next(_task_ids)
        try:
            payload = payload_for(task_id)
        except SerializationError as exc:
            future.set_exception(exc)
            return future
        self._core.submit(_Task(task_id, future, payload, fn, chunk, options))
        return future

    def _prepare_fn(self, fn: Callable[..., Any]) -> bytes | None:
        return _task.serialize_callable(fn)

    def _submit_chunk(
        self,
        fn: Callable[..., Any],
        items: list[tuple[Any, ...]],
        fn_blob: bytes | None,
        options: _pool.TaskOptions,
    ) -> Future[_pool.ChunkResult]:
        assert fn_blob is not None
        return self._enqueue(
            lambda task_id: _task.serialize_chunk(task_id, fn_blob, items), fn, True, options
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._core.shutdown(wait, cancel_futures)

    def _abort(self) -> None:
        self._core.shutdown(wait=True, cancel_futures=True, kill=True)
