"""Run pool shutdowns when the interpreter exits, before threads are joined.

``threading._register_atexit`` (what ``concurrent.futures`` itself uses) runs
hooks before non-daemon threads are joined and before ``atexit`` handlers, so
a pool can still finish its queued work and then stop its workers cleanly.
Pools are held weakly: registering one does not keep it alive.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

_hooks: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def register_exit_hook(obj: Any, hook: Callable[[Any], None]) -> None:
    with _lock:
        _hooks[obj] = hook


def _run_hooks() -> None:
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
