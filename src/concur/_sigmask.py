"""Holding back signals in one thread, cheaply.

Python runs signal handlers in the main thread, between any two bytecodes;
an exception a handler raises (``KeyboardInterrupt``, a timeout built on
``signal.alarm``) lands wherever that thread is. The few steps that must
not be cut in two (a caller reading its reply off a worker's pipe) hold
every catchable signal back for their length, and concur's own threads
never take one, so a signal waits for the main thread to let it in.

``signal.pthread_sigmask`` returns the old mask as a set of ``Signals``
members, about 10 µs for a mask of every signal; this calls the C function
through ctypes instead (about 0.6 µs). Where that is not possible, only
SIGINT is held, through the signal module.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
from collections.abc import Iterator
from typing import Any

# Signals a fault raises in the thread that caused it, and those no thread
# can block: holding the first back would turn a crash into a hang.
_SYNCHRONOUS = [
    "SIGKILL",
    "SIGSTOP",
    "SIGSEGV",
    "SIGBUS",
    "SIGFPE",
    "SIGILL",
    "SIGTRAP",
    "SIGSYS",
    "SIGABRT",
]
HELD: frozenset[int] = frozenset(signal.valid_signals()) - {
    getattr(signal, name) for name in _SYNCHRONOUS if hasattr(signal, name)
}


class _Sigset(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_ulong * 16)]  # 1,024 bits: glibc's size, more than others'


def _load() -> tuple[Any, _Sigset] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mask = libc.pthread_sigmask
        add = libc.sigaddset
    except (OSError, AttributeError):
        return None
    mask.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    held = _Sigset()
    for signum in HELD:
        if add(ctypes.byref(held), signum) != 0:
            return None
    return mask, held


_C = _load()


class Held:
    """The thread's signal mask, kept on the way in and restored on the way out.

    ``hold()`` holds back every catchable signal; ``let_in()`` opens the mask
    as it was found (for a wait that may be interrupted) until the next
    ``hold()``. Entering changes nothing, so a handler's exception on the
    way in loses nothing; hold inside the ``with``, where whatever lands
    afterwards finds ``__exit__`` to restore the mask. Re-entrant: each one
    restores the mask it found.
    """

    __slots__ = ("_saved",)

    def __init__(self) -> None:
        self._saved: _Sigset | set[int] | None = None

    def __enter__(self) -> Held:
        if _C is not None:
            saved = _Sigset()
            _C[0](signal.SIG_BLOCK, None, ctypes.byref(saved))
            self._saved = saved
        else:
            self._saved = set(signal.pthread_sigmask(signal.SIG_BLOCK, ()))
        return self

    def __exit__(self, *exc: object) -> None:
        self.let_in()

    def let_in(self) -> None:
        saved = self._saved
        if isinstance(saved, _Sigset):
            assert _C is not None
            _C[0](signal.SIG_SETMASK, ctypes.byref(saved), None)
        elif saved is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, saved)

    def hold(self) -> None:
        if _C is not None:
            _C[0](signal.SIG_BLOCK, ctypes.byref(_C[1]), None)
        else:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


_started = threading.local()  # .mask: what one of concur's threads started with


def hold_in_this_thread() -> None:
    """For the first line of concur's own threads: they never take a signal,
    which then goes to the main thread (or a thread of the program)."""
    _started.mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


@contextlib.contextmanager
def as_started() -> Iterator[None]:
    """Inside, one of concur's threads has the mask it started with (for the
    program's code it runs: callbacks, and whatever threads or processes
    they start, which inherit the mask); nothing changes in other threads."""
    mask = getattr(_started, "mask", None)
    if mask is None or threading.current_thread() is threading.main_thread():  # a fork's child
        yield
        return
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


@contextlib.contextmanager
def for_children() -> Iterator[None]:
    """The mask children start with while inside: SIGINT held (a press during
    their start waits until they ignore it), every other signal let in."""
    old = signal.pthread_sigmask(signal.SIG_SETMASK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
