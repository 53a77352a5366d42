"""The pools' futures: a cancel that stops a running task, and a wait that a
signal handler cannot cut in two.

Python runs signal handlers in the main thread, between any two bytecodes,
whichever thread the kernel gave the signal to. ``Future.result()`` waits
inside ``threading.Condition``, whose Python code an exception from a
handler (Ctrl-C, an alarm a program times calls out with) can interrupt
half-way: the future's lock then stays held, and every thread that
settles a future of the pool hangs on it, or it is released twice and
``RuntimeError: cannot release un-acquired lock`` replaces the caller's
exception. So in the main thread a concur future never takes its lock to
wait: it waits on ``_gate``, a lock of its own that is released once, as
the future is settled, and reads the outcome from the settled state. A
handler's exception can then land only on either side of one C call that
leaves nothing half done. A process pool's caller reads its worker's pipe
first (``_replies``), with every catchable signal held back but in the
poll, so that a reply is never torn.

Other threads never run a Python signal handler and wait as any future
does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, RUNNING
from typing import Any

from . import _sigmask, _task

FUTURES_LOG = logging.getLogger("concurrent.futures")
_DONE = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED})

# Given the time left and the main thread's Held (None in other threads),
# reads the task's reply in this thread if it can; returns when it cannot.
Reader = Callable[[float | None, "_sigmask.Held | None"], None]


class RunningFuture(Future[Any]):
    """A Future whose ``cancel()`` also stops a task that is already running.

    The pool sets ``_stop``: a callable that stops the task where it runs
    (kills its worker process) and returns True if it did; it is dropped
    once the future is done, with everything it held.

    A process pool also sets ``_read``: the ``Reader`` that lets the thread
    calling ``result()`` or ``exception()`` read the reply itself (see
    ``_replies``); when it cannot, the wait goes on as for any future.

    Done-callbacks run in the thread that settles the future: the pool's
    own, or the one that read its reply in ``result()``. One that raises,
    even ``SystemExit``, is logged on the ``concurrent.futures`` logger, as
    the standard library logs an ``Exception``, and costs nothing else: the
    thread that settled the future goes on. A pool's own thread holds every
    signal back; its callbacks run with the mask the thread started with,
    so the threads and processes they start take signals as usual.
    """

    _stop: Callable[[], bool] | None = None
    _read: Reader | None = None

    def __init__(self) -> None:
        super().__init__()
        self._gate = threading.Lock()  # released once, as the future is settled
        self._gate.acquire()

    def result(self, timeout: float | None = None) -> Any:
        try:
            if self._state != FINISHED:
                if threading.current_thread() is not threading.main_thread():
                    return super().result(self._read_here(timeout, None))
                self._wait_in_main(timeout)
                self._raise_unless_finished()
            if self._exception is not None:
                raise self._exception
            return self._result
        finally:
            self = None  # type: ignore[assignment]  # no cycle through the exception's traceback

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != FINISHED:
            if threading.current_thread() is not threading.main_thread():
                return super().exception(self._read_here(timeout, None))
            self._wait_in_main(timeout)
            self._raise_unless_finished()
        return self._exception

    # The state is one attribute, read whole: no need for the lock, which a
    # signal handler's exception could leave held (see above).
    def done(self) -> bool:
        return self._state in _DONE

    def cancelled(self) -> bool:
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def running(self) -> bool:
        return self._state == RUNNING

    def _raise_unless_finished(self) -> None:
        state = self._state
        if state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            raise CancelledError()
        if state != FINISHED:
            raise FuturesTimeout()

    def _read_here(self, timeout: float | None, held: _sigmask.Held | None) -> float | None:
        """Read the reply in this thread if the pool allows; the time left."""
        read = self._read
        if read is None or self.done():
            return timeout
        started = time.monotonic()
        read(timeout, held)
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))

    def _wait_in_main(self, timeout: float | None) -> None:
        """Until the future is done or the time is up, in the main thread: the
        reader's poll with every signal held back but there, then the gate,
        never the future's lock."""
        left = timeout
        if self._read is not None:
            with _sigmask.Held() as held:
                held.hold()  # inside the with: whatever lands from here finds the mask restored
                left = self._read_here(timeout, held)
        deadline = None if left is None else time.monotonic() + left
        while self._state not in _DONE:
            if deadline is None:
                self._gate.acquire()
                continue
            wait = deadline - time.monotonic()
            if wait <= 0:
                return
            self._gate.acquire(True, wait)

    def _invoke_callbacks(self) -> None:
        self._stop = None
        self._read = None
        try:
            self._gate.release()
        except RuntimeError:
            pass  # released once: a second settle is refused
        if not self._done_callbacks:  # type: ignore[attr-defined]
            return
        with _sigmask.as_started():
            for callback in self._done_callbacks:  # type: ignore[attr-defined]
                try:
                    callback(self)
                except BaseException:
                    FUTURES_LOG.exception("exception calling callback for %r", self)

    def cancel(self) -> bool:
        if super().cancel():
            return True
        stop = self._stop
        if stop is None or not self.running() or not stop():
            return False
        with self._condition:
            if self._state != RUNNING:
                return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()
        return True


def settle(future: Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    """Set a result or exception unless the future is already done.

    A pool's future can be finished from two sides (a reply and a timeout, a
    crash and a cancel); the first one wins and the other is dropped.
    """
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass


def settle_outcome(future: Future[Any], outcome: _task.Outcome) -> None:
    """Settle a future from one call's outcome (a value, or an exception)."""
    error = _task.outcome_error(outcome)
    if error is None:
        settle(future, outcome[1])
    else:
        settle(future, error=error)
