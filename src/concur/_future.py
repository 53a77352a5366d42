"""The pools' futures: a cancel that stops a running task, and a wait that a
signal handler cannot cut in two.

Python runs signal handlers in the main thread, between any two bytecodes.
``Future.result()`` waits inside ``threading.Condition``, whose Python code
an exception from a handler (Ctrl-C, an alarm a program times calls out
with) can interrupt half-way: the future's lock then stays held, and every
thread that settles a future of the pool hangs on it, or it is released
twice and ``RuntimeError: cannot release un-acquired lock`` replaces the
caller's exception. So in the main thread a concur future waits with every
catchable signal held back and lets them in between slices of at most
``SLICE_S``, at a point where it holds no lock: a handler's exception lands
there, and a signal waits a slice at most. A process pool's caller reads
its worker's pipe meanwhile (``_replies``), and lets signals in for the
whole of its poll, where the reply comes as soon as it is written.

Other threads never run a Python signal handler and wait as any future
does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, RUNNING
from typing import Any

from . import _sigmask, _task

FUTURES_LOG = logging.getLogger("concurrent.futures")
SLICE_S = 0.05  # how long a signal can wait for a waiting main thread to let it in

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

    def result(self, timeout: float | None = None) -> Any:
        try:
            if self._state == FINISHED:  # settled for good: no lock to take
                if self._exception is not None:
                    raise self._exception
                return self._result
            if threading.current_thread() is not threading.main_thread():
                return super().result(self._read_here(timeout, None))
            with _sigmask.Held() as held:
                held.hold()  # inside the with: whatever lands from here finds the mask restored
                self._wait_held(held, timeout)
                if self._state != FINISHED:
                    return super().result(0)  # cancelled, or the time is up
            if self._exception is not None:
                raise self._exception
            return self._result
        finally:
            self = None  # type: ignore[assignment]  # no cycle through the exception's traceback

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        if threading.current_thread() is not threading.main_thread():
            return super().exception(self._read_here(timeout, None))
        with _sigmask.Held() as held:
            held.hold()
            self._wait_held(held, timeout)
            return super().exception(0)

    def _read_here(self, timeout: float | None, held: _sigmask.Held | None) -> float | None:
        """Read the reply in this thread if the pool allows; the time left."""
        read = self._read
        if read is None or self.done():
            return timeout
        started = time.monotonic()
        read(timeout, held)
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))

    def _wait_held(self, held: _sigmask.Held, timeout: float | None) -> None:
        """Until the future is done or the time is up, signals held back but
        between slices (and in the reader's poll)."""
        left = self._read_here(timeout, held)
        deadline = None if left is None else time.monotonic() + left
        while True:
            wait = SLICE_S if deadline is None else min(SLICE_S, deadline - time.monotonic())
            with self._condition:
                if self._state in (CANCELLED_AND_NOTIFIED, FINISHED) or wait <= 0:
                    return
                self._condition.wait(wait)
            if self._state in (CANCELLED_AND_NOTIFIED, FINISHED):
                return
            held.let_in()  # a signal that came meanwhile lands here, where no lock is held
            held.hold()

    def _invoke_callbacks(self) -> None:
        self._stop = None
        self._read = None
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
