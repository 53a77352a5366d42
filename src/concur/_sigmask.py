"""Holding back signals in one thread, cheaply.

Python runs signal handlers in the main thread, between any two bytecodes;
an exception a handler raises (``KeyboardInterrupt``, a timeout built on
``signal.alarm``) lands wherever that thread is. The few steps that must
not be cut in two (a caller reading its reply off a worker's pipe) hold
every catchable signal back for their length, and concur's own threads
never take one, so a signal waits for the main thread to let it in.

``signal.pthread_sigmask`` returns the old mask as a set of ``Signals``
members, about 10 µs for a mask of every signal; this calls the C function
through ctypes instead (about 0.4 µs). Where that is not possible, only
SIGINT is held, through the signal module.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
from collections.abc import Iterator

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


class _C:
    """``pthread_sigmask`` through ctypes, with the sets it is called with."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        # Called with an int and byref() pointers or None only, which ctypes
        # passes as they are: declared argtypes would double the call's cost.
        self.mask = libc.pthread_sigmask
        add = libc.sigaddset
        self.held = _Sigset()
        for signum in HELD:
            if add(ctypes.byref(self.held), signum) != 0:
                raise OSError(f"sigaddset refused signal {signum}")
        self.held_ref = ctypes.byref(self.held)
        # No thread's mask holds SIGKILL (the kernel drops it from every
        # set): a saved mask with its bit set was never filled in.
        unset = _Sigset()
        if add(ctypes.byref(unset), signal.SIGKILL) != 0:
            raise OSError("sigaddset refused SIGKILL")
        self.unset_word = next(i for i, word in enumerate(unset.bits) if word)
        self.unset_bit = unset.bits[self.unset_word]


def _load() -> _C | None:
    try:
        return _C()
    except (OSError, AttributeError):
        return None


_LIBC = _load()
_BLOCK, _SETMASK = int(signal.SIG_BLOCK), int(signal.SIG_SETMASK)


class Held:
    """The thread's signal mask, kept by the first ``hold()`` and restored
    on the way out.

    ``hold()`` holds back every catchable signal; ``let_in()`` opens the mask
    as it was found (for a wait that may be interrupted) until the next
    ``hold()``. Entering changes nothing; hold inside the ``with``, where
    whatever lands afterwards finds ``__exit__`` to restore the mask. The
    first ``hold()`` blocks and keeps the old mask in one call: a saved mask
    that still holds SIGKILL's bit, which no real mask has, says the call
    never ran, so an exception that lands on either side of it restores
    exactly what needs restoring. Re-entrant: each one restores the mask
    it found.
    """

    __slots__ = ("_ref", "_saved", "_set")

    def __init__(self) -> None:
        self._set: set[int] | None = None  # without ctypes: the mask found
        if _LIBC is not None:
            self._saved = _Sigset()
            self._ref = ctypes.byref(self._saved)

    def __enter__(self) -> Held:
        if _LIBC is not None:
            self._saved.bits[_LIBC.unset_word] = _LIBC.unset_bit
        else:
            self._set = set(signal.pthread_sigmask(signal.SIG_BLOCK, ()))
        return self

    def __exit__(self, *exc: object) -> None:
        self.let_in()

    def let_in(self) -> None:
        libc = _LIBC
        if libc is not None:
            if not self._saved.bits[libc.unset_word] & libc.unset_bit:
                libc.mask(_SETMASK, self._ref, None)
        elif self._set is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._set)

    def hold(self) -> None:
        libc = _LIBC
        if libc is not None:
            unset = self._saved.bits[libc.unset_word] & libc.unset_bit
            libc.mask(_BLOCK, libc.held_ref, self._ref if unset else None)
        else:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


_started = threading.local()  # .held: the mask one of concur's threads started with


def hold_in_this_thread() -> None:
    """For the first line of concur's own threads: they never take a signal,
    which then goes to the main thread (or a thread of the program)."""
    if _LIBC is None:
        _started.mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
        return
    held = Held().__enter__()  # for the thread's life
    held.hold()
    _started.held = held


@contextlib.contextmanager
def as_started() -> Iterator[None]:
    """Inside, one of concur's threads has the mask it started with (for the
    program's code it runs: callbacks, and whatever threads or processes
    they start, which inherit the mask); nothing changes in other threads."""
    if threading.current_thread() is threading.main_thread():  # (a fork's child too)
        yield
        return
    held: Held | None = getattr(_started, "held", None)
    mask = getattr(_started, "mask", None)
    if held is not None:
        held.let_in()
    elif mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    else:
        yield  # not one of concur's threads
        return
    try:
        yield
    finally:
        if held is not None:
            held.hold()
        else:
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
