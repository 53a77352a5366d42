"""Reading a process worker's replies: one reader at a time, and it may be the caller.

The supervisor thread hears of every worker's reply pipe. A caller that
blocks in ``Future.result()`` on a task a worker is running reads that
worker's pipe itself instead: the reply then wakes one thread, the one
that waits for it, where it would wake the supervisor, which would wake
the caller (a second hop, about one pipe round trip more per call).

    worker.reader   a lock: whoever reads worker.rx holds it
    Watch.mute      the supervisor stops hearing of a pipe a caller reads
    Watch.unmute    ... hears of it again: a reply that came meanwhile is
                    reported at once (the poll is level-triggered)

Rules that keep the two readers apart:

* a caller claims a pipe under the pool's lock, only for the task the
  worker holds, with a non-blocking acquire of ``reader``, and mutes it;
  it lets go (and unmutes) under the same lock, before it settles the
  future, so a callback waiting for the worker's next task finds the pipe
  free;
* the supervisor reads only with ``reader`` held; to unwatch and close a
  worker's pipes (its exit, the pool's end) it takes ``reader`` blocking,
  never while it holds the pool's lock. A caller's wait polls the worker's
  exit too, and looks at its future every ``_SLICE_S``, so it lets go soon
  after the worker dies or the pool fails the task some other way;
* ``worker.watched`` turns False, under the pool's lock, before a pipe is
  unwatched, so no one mutes a descriptor that may since name another pipe.

Only where the poll is ``epoll`` (Linux) can another thread mute it safely;
elsewhere callers wait as they would for any future.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import selectors
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import _logs, _pool, _task
from .errors import ProcessPoolBroken, SerializationError

if TYPE_CHECKING:
    from ._supervisor import PoolState, Task
    from ._workerproc import WorkerProcess

RELEASE_MESSAGE = _task.task_message(_task.RELEASE, 0)
EXIT_GRACE_S = 2.0  # how long a worker whose initializer failed gets to exit
_SLICE_S = 0.02  # how often a reading caller looks whether its future was settled
_log = logging.getLogger("concur")

Settle = Callable[[], None]


class Watch:
    """The supervisor's poll over descriptors, each with its data.

    ``mute``/``unmute`` may be called from any thread while another polls.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._selector = None if self._epoll is not None else selectors.DefaultSelector()
        self._data: dict[int, Any] = {}

    @property
    def can_mute(self) -> bool:
        return self._epoll is not None

    def register(self, fd: int, data: Any) -> None:
        self._data[fd] = data
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            assert self._selector is not None
            self._selector.register(fd, selectors.EVENT_READ)

    def unregister(self, fd: int) -> None:
        if self._data.pop(fd, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                assert self._selector is not None
                self._selector.unregister(fd)

    def watching(self, fd: int) -> bool:
        return fd in self._data

    def mute(self, fd: int) -> None:
        # One-shot with no events: a hang-up is reported at most once.
        assert self._epoll is not None
        with contextlib.suppress(OSError):
            self._epoll.modify(fd, select.EPOLLONESHOT)

    def unmute(self, fd: int) -> None:
        assert self._epoll is not None
        with contextlib.suppress(OSError):
            self._epoll.modify(fd, select.EPOLLIN)

    def select(self, timeout: float | None) -> list[Any]:
        if self._epoll is not None:
            events = self._epoll.poll(-1 if timeout is None else timeout)
            fds = [fd for fd, _ in events]
        else:
            assert self._selector is not None
            fds = [key.fd for key, _ in self._selector.select(timeout)]
        return [self._data[fd] for fd in fds if fd in self._data]

    def close(self) -> None:
        self._data.clear()
        if self._epoll is not None:
            self._epoll.close()
        else:
            assert self._selector is not None
            self._selector.close()


# -- what a reply does, whoever read it ------------------------------------------


def take(state: PoolState, worker: WorkerProcess, data: bytes) -> Settle | None:
    """Apply one reply to the pool; what it returns settles a future, to be
    run once the reader has let go of the pipe (it runs callbacks)."""
    kind, flags, task_id, wall, cpu = _task.REPLY_HEAD.unpack_from(data)
    body = memoryview(data)[_task.REPLY_HEAD.size :]
    if kind == _task.DONE:
        return _done(state, worker, task_id, flags, body, (wall, cpu))
    if kind == _task.READY:
        task = state.worker_ready(worker)
        if task is not None:
            send(worker, task)
    elif kind == _task.LOG:
        try:
            _logs.handle(body)
        except Exception:
            _log.exception("a log record from worker %s could not be handled", worker.pid)
    elif kind == _task.INIT_FAILED:
        failure = _task.outcome_error(unpickled(body))
        with state.lock:  # the pool breaks when the worker is gone
            worker.failure = ProcessPoolBroken(
                f"a worker's initializer failed ({type(failure).__name__}: "
                f"{_task.safe_str(failure)}); the pool cannot run tasks. "
                "Fix the initializer and create a new pool."
            )
            worker.kill_at = time.monotonic() + EXIT_GRACE_S
        state.wake()  # the supervisor's next timeout changed
    return None


def _done(
    state: PoolState,
    worker: WorkerProcess,
    task_id: int,
    flags: int,
    body: memoryview,
    times: tuple[float, float],
) -> Settle | None:
    task, following = state.task_done(worker, task_id, bool(flags & _task.RETIRING))
    if task is None:
        _log.warning("worker %s answered task %s, not its own", worker.pid, task_id)
        if flags & _task.SHARED:
            _send_bytes(worker, RELEASE_MESSAGE)
        return None
    buffers: list[memoryview] | None = None
    outcome: Any = None
    if flags & _task.SHARED:
        # Mapped before the worker hears from us: then it lets go of them.
        try:
            body, buffers = _task.unpack(body, writable=True)
        except SerializationError as exc:
            outcome = (_task.RAISED, exc)
    if following is not None:
        send(worker, following)
    elif flags & _task.SHARED or task.keep:
        _send_bytes(worker, RELEASE_MESSAGE)  # idle: it lets go of every mapping
    if outcome is None:
        outcome = unpickled(body, buffers)
    future = task.future
    if outcome[0] == _task.CHUNK_DONE:
        value = (outcome[1], *times)
        return lambda: _pool.settle(future, value)
    return lambda: _pool.settle_outcome(future, outcome)


def send(worker: WorkerProcess, task: Task) -> None:
    _send_bytes(worker, task.payload)


def _send_bytes(worker: WorkerProcess, data: bytes) -> None:
    try:
        worker.tx.send_bytes(data)
    except OSError:
        pass  # the worker died; the supervisor sees its exit and fails the task


def unpickled(body: memoryview, buffers: list[memoryview] | None = None) -> Any:
    """A reply's body; one that cannot be unpickled here becomes the task's error."""
    try:
        return _task.loads(body, buffers=buffers)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        error = SerializationError(
            f"the task's result could not be unpickled here: {type(exc).__name__}: "
            f"{_task.safe_str(exc)}",
            what="result",
        )
        return (_task.RAISED, error)


# -- a caller reading its own reply -----------------------------------------------


def wait_in_caller(state: PoolState, task: Task, timeout: float | None) -> None:
    """Read the reply to ``task`` in this thread, if its worker's pipe is free.

    Returns when the future is done, the time is up, the worker died, or the
    pipe was not free; the caller then waits on the future as usual.

    In the main thread Ctrl-C is held back everywhere but in the poll: a
    press while a reply is read, applied or settled would lose it (its
    future would never settle) or leave the pipe claimed.
    """
    watch = state.watch
    worker = task.worker
    if watch is None or not watch.can_mute or worker is None or os.getpid() != state.owner:
        return
    with _CtrlCGate() as gate:
        with state.lock:
            if worker.task is not task or not worker.watched or not worker.ready:
                return
            if not worker.reader.acquire(blocking=False):
                return
            watch.mute(worker.rx.fileno())
        settle: Settle | None = None
        try:
            settle = _read_until_done(state, worker, task, timeout, gate)
        finally:
            with state.lock:
                worker.reader.release()
                if worker.watched:
                    watch.unmute(worker.rx.fileno())
        if settle is not None:
            settle()


def _read_until_done(
    state: PoolState,
    worker: WorkerProcess,
    task: Task,
    timeout: float | None,
    gate: _CtrlCGate,
) -> Settle | None:
    rx = worker.rx.fileno()
    poll = select.poll()
    poll.register(rx, select.POLLIN)
    poll.register(worker.exit_fd, select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + timeout
    while not task.future.done():
        wait = _SLICE_S if deadline is None else min(_SLICE_S, deadline - time.monotonic())
        if wait <= 0:
            return None
        with gate.open():
            ready = {fd for fd, _ in poll.poll(wait * 1000)}
        if rx in ready:
            try:
                data = worker.rx.recv_bytes()
            except (EOFError, OSError):
                return None  # it died mid-reply; the supervisor reports the death
            settle = take(state, worker, data)
            if settle is not None:
                return settle
        elif ready:
            return None  # the worker exited: the supervisor reaps it
    return None


class _CtrlCGate:
    """SIGINT blocked in the main thread (the only one Python raises
    KeyboardInterrupt in) while inside, except within ``open()``. Where
    another thread of the program takes SIGINT, a press still lands in the
    main thread anywhere, as in any Python code."""

    def __init__(self) -> None:
        self._main = threading.current_thread() is threading.main_thread()
        self._saved: set[int] | None = None

    def __enter__(self) -> _CtrlCGate:
        if self._main:
            self._saved = set(signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._saved)

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        if self._saved is None or signal.SIGINT in self._saved:
            yield  # not the main thread, or Ctrl-C was blocked already
            return
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
