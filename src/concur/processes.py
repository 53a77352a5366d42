"""ProcessPool: a ``ProcessPoolExecutor`` that always knows what each worker holds.

    caller thread                     supervisor thread                worker process
    ─────────────                     ─────────────────                ──────────────
    submit(fn, *args)
      pickle the call (once) ──┐
      idle worker? ── yes ─────┼──────────── task pipe (one per worker) ──► run fn
                    no ─► pending deque                                        │
                               │      select() on every worker's              │
                               │      result pipe, its exit (pidfd) ◄─ result pipe
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
``PR_SET_PDEATHSIG`` needs (see ``_supervise``). The supervisor and the state
it shares with callers are in ``_supervisor``; this module is the caller's
side: serializing, dispatching, cancelling, shutting down.

A pool belongs to the process that created it. A child made with
``os.fork()`` inherits the object, and its pipes to the parent's workers:
using it there raises ``PoolInherited`` and never touches the parent's workers.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing
import multiprocessing.context
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

from . import _future, _pool, _replies, _shm, _stats, _supervise, _task, _worker
from ._exit import register_exit_hook
from ._proc import cpu_count
from ._replies import send
from ._supervisor import PoolState, Supervisor, Task
from .errors import PoolInherited, SerializationError
from .ps import WorkerInfo, parse_size, rss

P = ParamSpec("P")
R = TypeVar("R")

_pool_ids = itertools.count()
_task_ids = itertools.count()


EXPOSED_FORKSERVER = (
    "CVE-2022-42919: on CPython 3.10.0 to 3.10.8, multiprocessing's fork server "
    "listens on an abstract socket that any user of this machine can connect to "
    "and run code as this program"
)


def forkserver_exposed(version: tuple[int, int, int] | None = None) -> bool:
    """True where the fork server is open to other local users (``EXPOSED_FORKSERVER``)."""
    found = tuple(sys.version_info[:3]) if version is None else version
    return sys.platform.startswith("linux") and (3, 10, 0) <= found <= (3, 10, 8)


def default_start_method() -> str:
    """forkserver on Linux, spawn elsewhere (see docs/start-methods.md).

    ``fork`` copies the parent's threads' locks in whatever state they are in
    and is unsafe once any thread runs (a pool's supervisor always does);
    ``forkserver`` forks from a clean single-threaded server, so it is safe and
    starts workers several times faster than ``spawn``. Where the fork server
    is exposed (CPython 3.10.0-3.10.8), spawn, with a warning (issued from
    here, so the default warning filter shows it once).
    """
    if not sys.platform.startswith("linux"):
        return "spawn"
    if forkserver_exposed():
        warnings.warn(
            f"{EXPOSED_FORKSERVER}; concur starts its workers with spawn instead "
            "(slower to start). Upgrade Python to 3.10.9 or later to use forkserver.",
            RuntimeWarning,
            stacklevel=1,
        )
        return "spawn"
    return "forkserver"


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
        if forkserver_exposed():
            raise ValueError(
                f"{EXPOSED_FORKSERVER}. Upgrade Python to 3.10.9 or later, or use "
                'mp_context="spawn" (or leave it out: concur then uses spawn here).'
            )
        _preload_in_forkserver(ctx)
    return ctx


def _preload_in_forkserver(ctx: multiprocessing.context.BaseContext) -> None:
    """Have the fork server import concur once, so each worker forks with it loaded.

    Saves each worker ~50 ms of imports. The server's default preload,
    ``["__main__"]``, would run the main script in the server: concur's
    workers do not need it (see ``_supervise``), and a script without a main
    guard would start processes there, so it is dropped; a list the program
    set itself is kept. No effect once the server runs.
    """
    import multiprocessing.forkserver as forkserver

    server = getattr(forkserver, "_forkserver", None)
    modules = list(getattr(server, "_preload_modules", None) or [])
    if modules == ["__main__"]:
        modules = []
    if "concur._worker" not in modules:
        ctx.set_forkserver_preload([*modules, "concur._worker"])


_live_states: weakref.WeakSet[PoolState] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock some thread held at the fork would never be released here.
    for state in list(_live_states):
        state.lock = threading.Lock()
    _forget_parents_forkserver()


def _forget_parents_forkserver() -> None:
    """A child made by ``os.fork()`` must start its own fork server.

    multiprocessing's server object, copied from the parent, names the
    parent's server: ``waitpid`` on it fails here (not this process's
    child), so every new pool in the child would be broken. The copy of
    the server's liveness pipe is closed (the parent keeps its own); the
    socket file is the parent's and stays.
    """
    forkserver = sys.modules.get("multiprocessing.forkserver")  # not loaded: none started
    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return  # no server started (or this is one of its workers)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        with contextlib.suppress(OSError):
            os.close(alive)
    server._forkserver_alive_fd = None
    server._forkserver_pid = None
    server._forkserver_address = None
    if hasattr(server, "_forkserver_authkey"):
        server._forkserver_authkey = None
    server._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ProcessPool(_pool.PoolBase):
    """A pool of worker processes; a drop-in for ``ProcessPoolExecutor``.

    Beyond the standard library: lambdas and closures work (cloudpickle), a
    worker's exception arrives with its own type and the worker's traceback,
    a worker that dies fails only its task (``WorkerCrashed``), tasks can
    have time limits that really stop them (and what they started), a
    running task can be cancelled, workers never outlive the parent, worker
    log records go through the caller's logging, and ``map``/``imap`` chunk
    small work automatically.

    ``task_timeout``: seconds a task may run (from when it starts) before its
    worker is stopped and the task fails with ``TaskTimeout``.
    ``retries``: how many times a task whose worker crashed is run again on
    a fresh worker. ``max_tasks_per_child`` (tasks, counting each item of a
    chunk) and ``max_memory_per_child`` (bytes, or a string such as
    ``"512MB"``; checked after each task) retire a worker gracefully and
    replace it. ``forward_logging=False`` leaves logging in the workers as
    multiprocessing sets it up. ``pool.options(...)`` overrides the task
    settings for some calls.
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
        forward_logging: bool = True,
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
        init = None
        if initializer is not None:
            init = _worker.Initializer(initializer, tuple(initargs))
        self._max_workers = max_workers
        self._mp_context = ctx
        # Each worker's share of the CPUs, for pools its tasks start (docs/auto.md).
        budget = max(1, cpu_count() // max_workers)
        settings = _worker.Settings(
            "", max_tasks_per_child, max_memory, {} if forward_logging else None, budget
        )
        self._state = PoolState(ctx, max_workers, f"ProcessPool-{next(_pool_ids)}", settings, init)
        _live_states.add(self._state)
        # Collected without shutdown: finish the queued work, then stop.
        weakref.finalize(self, _shutdown, self._state, False, False)
        register_exit_hook(self, ProcessPool._exit_hook)

    @property
    def start_method(self) -> str:
        """The multiprocessing start method the workers use."""
        return str(self._mp_context.get_start_method())

    # ProcessPoolExecutor's attributes of these names, for code that reads them.
    @property
    def _broken(self) -> BaseException | None:
        return self._state.broken

    @property
    def _processes(self) -> dict[int, multiprocessing.process.BaseProcess]:
        with self._state.lock:
            return {pid: w.process for pid, w in self._state.workers.items()}

    def workers(self) -> list[WorkerInfo]:
        """Each worker now: pid, state, the task it runs and for how long, RSS."""
        self._check_owner()
        return _info(self._state)

    def stats(self) -> _stats.PoolStats:
        """What the pool did so far: each worker's start-up, idle and working
        time and tasks done (exited workers too, the last 64), and the
        slowest tasks with their labels (see docs/supervision.md)."""
        self._check_owner()
        state = self._state
        with state.lock:
            busy = {
                id(w.record): w.task_started
                for w in state.workers.values()
                if w.task is not None and w.ready
            }
        return state.stats.snapshot(busy)

    def _check_owner(self) -> None:
        if os.getpid() != self._state.owner:
            raise PoolInherited("concur.ProcessPool", self._state.owner)

    def _check_open(self) -> None:
        state = self._state
        _pool.check_open("concur.ProcessPool", state.owner, state.broken, state.closing)

    def _chunks_allowed(self, options: _pool.TaskOptions) -> bool:
        # max_tasks_per_child counts items: a chunk is never split between workers.
        return super()._chunks_allowed(options) and self._state.settings.max_tasks is None

    def _submit_with(
        self,
        options: _pool.TaskOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[Any]:
        return self._enqueue(
            lambda task_id: _task.serialize_call(task_id, fn, args, kwargs), fn, 1, options
        )

    def _enqueue(
        self,
        payload_for: Callable[[int], _task.Payload],
        fn: Callable[..., Any],
        items: int,
        options: _pool.TaskOptions,
    ) -> _future.RunningFuture:
        """Serialize a task here and now; one that cannot be fails its own future."""
        self._check_open()
        future = _future.RunningFuture()
        task_id = next(_task_ids)
        try:
            payload = payload_for(task_id)
        except SerializationError as exc:
            future.set_exception(exc)
            return future
        name = _task.describe(fn)
        task = Task(
            task_id, future, payload, f"a chunk of {name}" if items > 1 else name, items, options
        )
        state = self._state
        future._stop = functools.partial(_stop_task, state, task)
        future._read = functools.partial(_replies.wait_in_caller, state, task)
        with state.lock:
            self._check_open()
            if state.thread is None:
                state.thread = Supervisor(state).thread
                state.thread.start()
            worker = state.idle.pop() if state.idle else None
            if worker is not None:
                future.set_running_or_notify_cancel()
                state.assign(worker, task)
            else:
                state.pending.append(task)
            wake = worker is None and len(state.workers) < state.max_workers
        if worker is not None:
            send(worker, task)
        if wake or task.deadline is not None:
            state.wake()  # start a worker, or wait for the new deadline
        return future

    def prepare_fn(self, fn: Callable[..., Any]) -> bytes | None:
        return _task.serialize_callable(fn)

    def copies_once(self) -> Callable[[], contextlib.AbstractContextManager[None]]:
        placement = _shm.Placement()
        return lambda: _shm.placing(placement)

    def submit_chunk(
        self,
        fn: Callable[..., Any],
        items: list[tuple[Any, ...]],
        fn_blob: bytes | None,
        options: _pool.TaskOptions,
    ) -> Future[_pool.ChunkResult]:
        assert fn_blob is not None
        return self._enqueue(
            lambda task_id: _task.serialize_chunk(task_id, fn_blob, items),
            fn,
            len(items),
            options,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        _shutdown(self._state, wait, cancel_futures)

    def abort(self) -> None:
        _shutdown(self._state, wait=True, cancel_futures=True, kill=True)


def _stop_task(state: PoolState, task: Task) -> bool:
    """Stop a running task for ``Future.cancel()``: kill the worker holding it."""
    if os.getpid() != state.owner:
        return False
    with state.lock:
        if task in state.pending:  # waiting for a retry
            state.pending.remove(task)
            return True
        for worker in state.workers.values():
            if worker.task is task and not worker.stopping:
                state.stop_worker(worker, graceful=False)
                return True
    return False


def _shutdown(
    state: PoolState,
    wait: bool,
    cancel_futures: bool,
    kill: bool = False,
) -> None:
    if os.getpid() != state.owner:
        return  # an inherited copy: the workers are the parent's to stop
    cancelled: list[Task] = []
    with state.lock:
        state.closing = True
        if cancel_futures or kill:
            cancelled = list(state.pending)
            state.pending.clear()
        if kill:
            cancelled += [w.task for w in state.workers.values() if w.task is not None]
        thread = state.thread
    for task in cancelled:
        task.future.cancel()  # a running task's worker is killed
    if thread is None:
        state.close_wake()
        return
    state.wake()
    if wait and thread is not threading.current_thread():
        thread.join()


def _info(state: PoolState) -> list[WorkerInfo]:
    now = time.monotonic()
    with state.lock:
        rows = [
            (w.name, w.pid, w.state, w.task, w.task_started, w.tasks_done)
            for w in state.workers.values()
        ]
    return [
        WorkerInfo(
            name=name,
            pid=pid,
            ident=pid,
            state=worker_state,
            task_id=task.id if task else None,
            task=task.label if task else None,
            running_for=now - started if task else None,
            tasks_done=done,
            rss=rss(pid),
        )
        for name, pid, worker_state, task, started, done in rows
    ]
