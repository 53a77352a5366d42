"""One watcher thread for time limits, shared by the thread pool and DaskPool.

``add(key, due, expire)`` asks for ``expire()`` to be called once
``time.monotonic()`` passes ``due``; ``remove(key)`` withdraws it. The thread
runs only while something is due and exits when nothing is left.

``expire`` runs with the watcher's lock held, so once ``remove(key)`` has
returned, that key's ``expire`` has either run or never will: a task that
ends just as its limit passes is timed out or not, never after it moved on.
It decides, and returns what to do after the lock is released (settling a
future runs its callbacks, which may do anything), or None.

A process pool's limits are watched by its supervisor's own loop, which
must also stop the worker (``_supervisor``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable

from . import _sigmask

Expire = Callable[[], Callable[[], None] | None]
_log = logging.getLogger("concur")


class Deadlines:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cond = threading.Condition()
        self.heap: list[tuple[float, int, Hashable]] = []
        self.live: dict[Hashable, tuple[int, Expire]] = {}  # key -> (its heap entry, expire)
        self.counter = itertools.count()
        self.thread: threading.Thread | None = None
        self.closed = False

    def add(self, key: Hashable, due: float, expire: Expire) -> None:
        with self.cond:
            entry = next(self.counter)
            self.live[key] = (entry, expire)
            heapq.heappush(self.heap, (due, entry, key))
            if self.thread is None and not self.closed:
                self.thread = threading.Thread(target=self.watch, name=self.name, daemon=True)
                self.thread.start()
            self.cond.notify()

    def remove(self, key: Hashable) -> None:
        with self.cond:
            if self.live.pop(key, None) is not None:  # its heap entry is skipped later
                self.cond.notify()  # nothing left: the thread may exit now

    def watch(self) -> None:
        _sigmask.hold_in_this_thread()
        while True:
            with self.cond:
                after = self.next_expiry()
                if after is False:
                    return
            if callable(after):
                try:
                    after()
                except Exception:
                    _log.exception("a time limit could not be applied")

    def next_expiry(self) -> Callable[[], None] | bool | None:
        """With the lock held: wait for the next due entry and expire it; what
        to run after (or None), or False when there is nothing left to watch."""
        while True:
            while self.heap and self.live.get(self.heap[0][2], (None,))[0] != self.heap[0][1]:
                heapq.heappop(self.heap)  # withdrawn, or replaced by a later add
            if not self.heap or self.closed:
                self.thread = None
                return False
            due, _, key = self.heap[0]
            wait = due - time.monotonic()
            if wait > 0:
                self.cond.wait(wait)
                continue
            heapq.heappop(self.heap)
            _, expire = self.live.pop(key)
            try:
                return expire()
            except Exception:
                _log.exception("a time limit could not be applied")
                return None

    def close(self) -> None:
        """Stop watching (what is due is not expired) and wait for the thread."""
        with self.cond:
            self.closed = True
            self.cond.notify()
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
