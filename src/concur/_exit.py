"""Run pool shutdowns when the interpreter exits, before threads are joined.

``threading._register_atexit`` (what ``concurrent.futures`` itself uses) runs
hooks before non-daemon threads are joined and before ``atexit`` handlers, so
a pool can still finish its queued work and then stop its workers cleanly.
Pools are held weakly: registering one does not keep it alive.

A program that dies of Ctrl-C prints its traceback, then runs these hooks
(which stop the pools' workers). A second press in that moment would
interrupt the shutdown and print a second traceback, so once a
KeyboardInterrupt reaches the top of a script (not an interactive session),
further presses are ignored: the program is already ending. The same holds
while the cleanup after a Ctrl-C inside a pool call runs
(``ignoring_ctrl_c``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any

_exiting = False
_hooks: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def register_exit_hook(obj: Any, hook: Callable[[Any], None]) -> None:
    with _lock:
        _hooks[obj] = hook


def exiting() -> bool:
    """True once the interpreter started its exit (the hooks ran)."""
    return _exiting


def _run_hooks() -> None:
    global _exiting
    _exiting = True
    with _lock:
        items = list(_hooks.items())
    for obj, hook in items:
        try:
            hook(obj)
        except Exception:  # one pool's trouble must not stop the others' shutdown
            pass


_register: Callable[[Callable[[], None]], None] | None = getattr(
    threading, "_register_atexit", None
)
if _register is not None:
    _register(_run_hooks)
else:  # pragma: no cover - every supported CPython has it
    import atexit

    atexit.register(_run_hooks)


def _wrap_excepthook() -> None:
    previous = sys.excepthook

    def excepthook(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        interactive = hasattr(sys, "ps1") or sys.flags.interactive
        main = threading.current_thread() is threading.main_thread()
        if issubclass(exc_type, KeyboardInterrupt) and main and not interactive:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook


_wrap_excepthook()


# Presses this soon after the one concur handled count as the same press.
_DEBOUNCE_S = 0.5
_handled_at = 0.0


def _debounced(sig: int, frame: FrameType | None) -> None:
    if time.monotonic() - _handled_at >= _DEBOUNCE_S:
        signal.default_int_handler(sig, frame)


@contextlib.contextmanager
def ignoring_ctrl_c() -> Iterator[None]:
    """Ignore further Ctrl-C while the cleanup after one runs (main thread only).

    A second press a moment after the first would otherwise interrupt the
    cancelling and killing, leave work running, and print a second
    traceback chained to the first. Presses in the half second after the
    cleanup are ignored too (a double press is one press); after that,
    Ctrl-C raises KeyboardInterrupt again. A handler the program installed
    itself is put back as it was.
    """
    global _handled_at
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        if previous in (signal.default_int_handler, _debounced):
            _handled_at = time.monotonic()
            previous = _debounced
        signal.signal(signal.SIGINT, previous)


def dying_of_interrupt() -> bool:
    """True when the interpreter is exiting because of an uncaught Ctrl-C."""
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)
