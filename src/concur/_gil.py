"""A shorter GIL switch interval while concur's own threads must act promptly.

A thread that returns from a blocking call needs the GIL back; while another
thread computes in pure Python it waits for the switch interval (5 ms by
default) each time. Starting a worker process takes about twenty such steps
in the supervisor thread, so a pool started next to one busy thread took
~100 ms instead of ~18 ms (two busy threads: ~200 ms). ``responsive()``
lowers the interval to ``FAST_SWITCH_S`` for the few milliseconds that
matter and puts the caller's value back when the last user leaves (unless
someone changed it meanwhile).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

FAST_SWITCH_S = 0.0005

_lock = threading.Lock()
_users = 0
_saved: float | None = None


def acquire() -> None:
    """Start a use of the short interval (pair with ``release``)."""
    global _users, _saved
    with _lock:
        if _users == 0:
            current = sys.getswitchinterval()
            _saved = current if current > FAST_SWITCH_S else None
            if _saved is not None:
                sys.setswitchinterval(FAST_SWITCH_S)
        _users += 1


def release() -> None:
    global _users, _saved
    with _lock:
        _users -= 1
        if _users == 0 and _saved is not None:
            if abs(sys.getswitchinterval() - FAST_SWITCH_S) < 1e-7:
                sys.setswitchinterval(_saved)
            _saved = None


class Hold:
    """One use of the short interval, released once (from any thread)."""

    def __init__(self) -> None:
        self._held = threading.Lock()
        self._released = False
        acquire()

    def release(self) -> None:
        with self._held:
            if self._released:
                return
            self._released = True
        release()


@contextmanager
def responsive() -> Iterator[None]:
    acquire()
    try:
        yield
    finally:
        release()
