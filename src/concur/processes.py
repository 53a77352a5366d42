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
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any, ParamSpec, TypeVar

from . import _pool, _supervise, _task, _worker
from ._exit import register_exit_hook
from .errors import PoolClosed, ProcessPoolBroken, SerializationError, WorkerCrashed

P = ParamSpec("P")
R = TypeVar("R")

_pool_ids = itertools.count()
_task_ids = itertools.count()

# How long a worker asked to exit gets before it is terminated, then killed.
_EXIT_GRACE_S = 2.0


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


class _Task:
    __slots__ = ("chunk", "fn", "future", "id", "payload")

    def __init__(
        self, task_id: int, future: Future[Any], payload: bytes, fn: object, chunk: bool
    ) -> None:
        self.id = task_id
        self.future = future
        self.payload = payload
        self.fn = fn
        self.chunk = chunk

    @property
    def label(self) -> str:
        name = _task.describe(self.fn)
        return f"a chunk of {name}" if self.chunk else name


class _Worker:
    __slots__ = (
        "name",
        "pid",
        "process",
        "retiring",
        "rx",
        "sentinel",
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
        self.retiring = False


_WAKE, _REPLY, _EXIT = 0, 1, 2


class _Core:
    """The pool's state, shared by callers and the supervisor thread.

    ``lock`` guards ``pending``, ``idle``, ``workers``, each worker's ``task``
    and the flags. Pipes are written outside the lock: a worker is written to
    only by whoever just gave it a task, so writes never interleave.
    """

    def __init__(
        self,
        ctx: multiprocessing.context.BaseContext,
        max_workers: int,
        init_blob: bytes | None,
        max_tasks: int | None,
        name: str,
    ) -> None:
        self.ctx = ctx
        self.max_workers = max_workers
        self.init_blob = init_blob
        self.max_tasks = max_tasks
        self.name = name
        self.lock = threading.Lock()
        self.pending: deque[_Task] = deque()
        self.idle: list[_Worker] = []
        self.workers: dict[int, _Worker] = {}
        self.closing = False
        self.broken: str | None = None
        self.thread: threading.Thread | None = None
        self.worker_ids = itertools.count()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.wake_r, selectors.EVENT_READ, (_WAKE, None))

    # -- called from any thread ---------------------------------------------

    def check_open(self) -> None:
        if self.broken is not None:
            raise ProcessPoolBroken(self.broken)
        if self.closing:
            raise PoolClosed("cannot schedule new futures after shutdown")

    def submit(self, task: _Task) -> None:
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
                worker.task = task
                worker.task_started = time.monotonic()
            else:
                self.pending.append(task)
                grow = len(self.workers) < self.max_workers
        if worker is not None:
            self.send(worker, task)
        elif grow:
            self.wake()

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        cancelled: list[_Task] = []
        with self.lock:
            self.closing = True
            if cancel_futures:
                cancelled = list(self.pending)
                self.pending.clear()
            thread = self.thread
        for task in cancelled:
            task.future.cancel()
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

    # -- the supervisor thread ----------------------------------------------

    def run(self) -> None:
        try:
            while not self.finished():
                self.grow()
                ready = self.selector.select()
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
        except BaseException as exc:  # a bug in concur: fail loudly, leave no child
            self.break_pool(f"the pool's supervisor failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            self.stop_workers()
            self.close_fds()

    def finished(self) -> bool:
        with self.lock:
            if self.broken is not None:
                return True
            busy = any(w.task is not None for w in self.workers.values())
            return self.closing and not self.pending and not busy

    def drain_wake(self) -> None:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass

    def next_task(self) -> _Task | None:
        """Pop the next pending task that was not cancelled (lock held)."""
        while self.pending:
            task = self.pending.popleft()
            if task.future.set_running_or_notify_cancel():
                return task
        return None

    def grow(self) -> None:
        while True:
            with self.lock:
                if self.broken or not self.pending or len(self.workers) >= self.max_workers:
                    return
            worker = self.start_worker()
            with self.lock:
                self.workers[worker.pid] = worker
            self.give_work(worker)

    def give_work(self, worker: _Worker) -> None:
        with self.lock:
            task = None if self.closing and not self.pending else self.next_task()
            if task is None:
                self.idle.append(worker)
                return
            worker.task = task
            worker.task_started = time.monotonic()
        self.send(worker, task)

    def start_worker(self) -> _Worker:
        number = next(self.worker_ids)
        name = f"{self.name}-worker-{number}"
        task_r, task_w = self.ctx.Pipe(duplex=False)
        result_r, result_w = self.ctx.Pipe(duplex=False)
        lifeline = Connection(os.dup(_supervise.lifeline_fd()), writable=False)
        process = self.ctx.Process(  # type: ignore[attr-defined]
            target=_worker.main,
            args=(task_r, result_w, lifeline, f"concur {name}", self.init_blob, self.max_tasks),
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
            task_id, outcome, _wall, _cpu, retiring = _task.loads(data)
        except Exception as exc:
            task_id, retiring = 0, False
            error = SerializationError(
                f"the task's result could not be unpickled here: {type(exc).__name__}: {exc}",
                what="result",
            )
            outcome = (_task.RAISED, error)
            _wall = _cpu = 0.0
        if task_id == _worker.INIT_FAILED:
            error_text = _task.unpack_exception(outcome[1])
            self.break_pool(
                f"a worker's initializer failed ({type(error_text).__name__}: {error_text}); "
                "the pool cannot run tasks. Fix the initializer and create a new pool."
            )
            return
        with self.lock:
            task, worker.task = worker.task, None
            worker.tasks_done += 1
            worker.retiring = retiring
            following = None if retiring else self.next_task()
            if following is not None:
                worker.task = following
                worker.task_started = time.monotonic()
            elif not retiring:
                self.idle.append(worker)
        if following is not None:
            self.send(worker, following)
        if task is not None:
            _settle(task.future, outcome, _wall, _cpu)

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
        with self.lock:
            del self.workers[worker.pid]
            if worker in self.idle:
                self.idle.remove(worker)
            task, worker.task = worker.task, None
        worker.tx.close()
        worker.rx.close()
        worker.process.close()
        if task is not None:
            _fail(task.future, WorkerCrashed(worker.pid, exitcode, task.label))

    def unregister(self, fd: int) -> None:
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def break_pool(self, message: str) -> None:
        with self.lock:
            self.broken = message
            tasks = list(self.pending) + [w.task for w in self.workers.values() if w.task]
            self.pending.clear()
            for worker in self.workers.values():
                worker.task = None
        error = ProcessPoolBroken(message)
        for task in tasks:
            _fail(task.future, error)

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


def _readable(conn: Connection) -> bool:
    try:
        return conn.poll(0)
    except (OSError, EOFError):
        return False


def _fail(future: Future[Any], error: BaseException) -> None:
    if future.cancelled() or future.done():
        return
    future.set_exception(error)


def _settle(future: Future[Any], outcome: _task.Outcome, wall: float, cpu: float) -> None:
    status, value = outcome
    if future.done():
        return
    if status == _task.CHUNK_DONE:
        future.set_result((value, wall, cpu))
    elif status == _task.OK:
        future.set_result(value)
    elif status == _task.RAISED:
        future.set_exception(value)
    else:
        future.set_exception(_task.unpack_exception(value))


class ProcessPool(_pool.PoolBase):
    """A pool of worker processes; a drop-in for ``ProcessPoolExecutor``.

    Beyond the standard library: lambdas and closures work (cloudpickle), a
    worker's exception arrives with its own type and the worker's traceback,
    a worker that dies fails only its task (``WorkerCrashed``), workers never
    outlive the parent, and ``map``/``imap`` chunk small work automatically.
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
            raise ValueError("max_tasks_per_child must be >= 1")
        ctx = get_context(mp_context)
        init_blob = None
        if initializer is not None:
            init_blob = _task.serialize_call(0, initializer, initargs, {})
        self._max_workers = max_workers
        self._mp_context = ctx
        self._core = _Core(
            ctx, max_workers, init_blob, max_tasks_per_child, f"ProcessPool-{next(_pool_ids)}"
        )
        # Collected without shutdown: finish the queued work, then stop.
        weakref.finalize(self, self._core.shutdown, False, False)
        register_exit_hook(self, ProcessPool._exit_hook)

    @property
    def start_method(self) -> str:
        """The multiprocessing start method the workers use."""
        return str(self._mp_context.get_start_method())

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        self._core.check_open()
        future: Future[R] = Future()
        task_id = next(_task_ids)
        try:
            payload = _task.serialize_call(task_id, fn, args, kwargs)
        except SerializationError as exc:
            future.set_exception(exc)
            return future
        self._core.submit(_Task(task_id, future, payload, fn, chunk=False))
        return future

    def _prepare_fn(self, fn: Callable[..., Any]) -> bytes | None:
        return _task.serialize_callable(fn)

    def _submit_chunk(
        self, fn: Callable[..., Any], items: list[tuple[Any, ...]], fn_blob: bytes | None
    ) -> Future[_pool.ChunkResult]:
        assert fn_blob is not None
        self._core.check_open()
        future: Future[_pool.ChunkResult] = Future()
        task_id = next(_task_ids)
        try:
            payload = _task.serialize_chunk(task_id, fn_blob, items)
        except SerializationError as exc:
            future.set_exception(exc)
            return future
        self._core.submit(_Task(task_id, future, payload, fn, chunk=True))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._core.shutdown(wait, cancel_futures)

    def _exit_hook(self) -> None:
        self.shutdown(wait=True)
