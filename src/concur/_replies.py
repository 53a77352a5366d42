"""Reading a process worker's replies: one reader at a time, and it may be the caller.

The supervisor thread hears of every worker's reply pipe. A caller that
blocks in ``Future.result()`` on a task a worker is running reads that
worker's pipe itself instead: the reply then wakes one thread, the one
that waits for it, where it would wake the supervisor, which would wake
the caller (a second hop, about one pipe round trip more per call).

    worker.reader   an RLock: whoever reads worker.rx holds it (only the holder
                    can release it: a caller lets go of its own claim only)
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
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from . import _future, _logs, _sigmask, _task, _wire
from .errors import ProcessPoolBroken, SerializationError, WorkerCrashed

if TYPE_CHECKING:
    from ._supervisor import PoolState, Task
    from ._workerproc import WorkerProcess

RELEASE_MESSAGE = _task.task_message(_task.RELEASE, 0)
EXIT_GRACE_S = 2.0  # how long a worker whose initializer failed gets to exit
_RETRIES = 3  # how often an interrupted settle is tried again
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
        try:  # (not contextlib.suppress: this runs twice a round trip)
            self._epoll.modify(fd, select.EPOLLONESHOT)
        except OSError:
            pass

    def unmute(self, fd: int) -> None:
        assert self._epoll is not None
        try:
            self._epoll.modify(fd, select.EPOLLIN)
        except OSError:
            pass

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


def take(state: PoolState, worker: WorkerProcess, data: bytes | bytearray) -> Settle | None:
    """Apply one reply to the pool; what it returns settles a future, to be
    run once the reader has let go of the pipe (it runs callbacks)."""
    if worker.stop_hint is TORN:
        return None  # what follows a torn reply is not a reply; the worker is being stopped
    if len(data) < _task.REPLY_HEAD.size:
        _log.warning(
            "a reply of %d bytes from worker %s cannot be read; ignored", len(data), worker.pid
        )
        return None
    kind, flags, task_id, wall, cpu = _task.REPLY_HEAD.unpack_from(data)
    body = memoryview(data)[_task.REPLY_HEAD.size :]
    if kind == _task.DONE:
        return _done(state, worker, task_id, flags, body, (wall, cpu))
    if kind == _task.READY:
        state.stats.ready(worker.record)
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
    state.stats.done(worker.record, task, task.items, *times)
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
    future = task.future
    # Unpickled when settled, after the reader let go of the pipe: the
    # longest step is then one that can be interrupted and run again.
    return lambda: _settle_reply(future, body, buffers, outcome, times)


def _settle_reply(
    future: Future[Any],
    body: memoryview,
    buffers: list[memoryview] | None,
    outcome: Any,
    times: tuple[float, float],
) -> None:
    if future.done():
        return
    if outcome is None:
        outcome = unpickled(body, buffers)
    if outcome[0] == _task.CHUNK_DONE:
        _future.settle(future, (outcome[1], *times))
    else:
        _future.settle_outcome(future, outcome)


def send(worker: WorkerProcess, task: Task) -> None:
    _send_bytes(worker, task.payload)


def _send_bytes(worker: WorkerProcess, data: bytes) -> None:
    try:
        _wire.send(worker.tx_fd, data)
    except OSError:
        pass  # the worker died; the supervisor sees its exit and fails the task


def unpickled(body: memoryview, buffers: list[memoryview] | None = None) -> Any:
    """A reply's body; one that cannot be unpickled here becomes the task's error."""
    try:
        return _task.loads(body, buffers=buffers)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        if _from_signal_handler(exc):
            raise  # the caller's own, not the result's
        error = SerializationError(
            f"the task's result could not be unpickled here: {type(exc).__name__}: "
            f"{_task.safe_str(exc)}",
            what="result",
        )
        return (_task.RAISED, error)


def _from_signal_handler(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a Python signal handler (its frame is in
    the traceback): an interrupt of the reader, not a fault of the reply."""
    codes = set()
    for signum in signal.valid_signals():
        handler = signal.getsignal(signum)
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            codes.add(code)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


# -- a caller reading its own reply -----------------------------------------------


def wait_in_caller(
    state: PoolState, task: Task, timeout: float | None, held: _sigmask.Held | None
) -> None:
    """Read the reply to ``task`` in this thread, if its worker's pipe is free.

    Returns when the future is done, the time is up, the worker died, or the
    pipe was not free; the caller then waits on the future as usual.

    ``held`` is the main thread's mask, every signal held back (see
    ``_future``): it is let in only for the poll, where a handler's
    exception (Ctrl-C, an alarm) loses nothing. The future is settled, and
    its callbacks run, after the pipe is let go and before signals are let
    in, as in a pool's own thread. Where a thread of the program takes a
    signal anyway, its handler's exception can land anywhere here: once a
    reply is being read or applied, the pipe and the pool's record of the
    worker can no longer be trusted, so the worker is stopped and the task
    fails with ``WorkerCrashed``; the pool replaces the worker and goes on.
    """
    watch = state.watch
    worker = task.worker
    if watch is None or not watch.can_mute or worker is None or os.getpid() != state.owner:
        return
    settles: list[Settle] = []
    try:
        if _claim(state, watch, worker, task):
            _read_until_done(state, worker, task, timeout, held, settles)
    finally:
        try:
            _let_go(state, watch, worker)
        finally:
            _deliver(settles)


def _claim(state: PoolState, watch: Watch, worker: WorkerProcess, task: Task) -> bool:
    with state.lock:
        if worker.task is not task or not worker.watched or not worker.ready:
            return False
        if not worker.reader.acquire(blocking=False):
            return False
        watch.mute(worker.rx_fd)
        return True


def _let_go(state: PoolState, watch: Watch, worker: WorkerProcess) -> None:
    # Whether this thread claimed the pipe is the reader lock's to say, not
    # a flag an exception could cut off from it: only its holder releases it.
    with state.lock:
        try:
            worker.reader.release()
        except RuntimeError:
            return  # not ours
        if worker.watched:
            watch.unmute(worker.rx_fd)


def _deliver(settles: list[Settle]) -> None:
    """Settle what was read; a future that an exception (a signal handler's)
    kept from being settled is settled again before the exception goes on."""
    for settle in settles:
        try:
            settle()
        except BaseException:
            for _ in range(_RETRIES):
                with contextlib.suppress(BaseException):
                    settle()  # does nothing once the future is settled
                    break
            raise


def _read_until_done(
    state: PoolState,
    worker: WorkerProcess,
    task: Task,
    timeout: float | None,
    held: _sigmask.Held | None,
    settles: list[Settle],
) -> None:
    rx = worker.rx_fd
    poll = worker.poller
    deadline = None if timeout is None else time.monotonic() + timeout
    reading = False  # True from a poll that found a reply until it is applied
    try:
        while not task.future.done():
            wait = _SLICE_S if deadline is None else min(_SLICE_S, deadline - time.monotonic())
            if wait <= 0:
                return
            if held is not None:
                held.let_in()
            try:
                ready = {fd for fd, _ in poll.poll(wait * 1000)}
            finally:
                if held is not None:
                    held.hold()
            reading = True
            if rx in ready:
                settle = take(state, worker, _wire.recv(worker.rx_fd))
                if settle is not None:
                    settles.append(settle)
                    return
            elif ready:
                return  # the worker exited: the supervisor reaps it
            reading = False
    except (EOFError, OSError):
        return  # it died mid-reply; the supervisor reports the death
    except BaseException:
        if reading:
            _abandon(state, worker, task)
        raise


TORN = (
    "An exception raised in the caller (by a signal handler) interrupted the "
    "reading of a reply from this worker; concur stopped the worker, as its "
    "pipe could no longer be trusted."
)


def _abandon(state: PoolState, worker: WorkerProcess, task: Task) -> None:
    """A reply was torn: stop the worker; its task (and ours, if the worker
    no longer holds it) fails with WorkerCrashed."""
    with state.lock:
        worker.stop_hint = TORN
        if not worker.stopping:
            state.stop_worker(worker, graceful=False)
        held = worker.task is task
    if not held:
        _future.settle(task.future, error=WorkerCrashed(worker.pid, None, task.label, hint=TORN))
