"""How many items wait on the outside world at once: grown by throughput.

Work that waits on a socket, a pipe or a file waits on something with a
capacity auto cannot see: a server that serves five at a time, with a
backlog of five, drops the SYNs of the twelfth connection, and each one
dropped costs a second or more before it is retried. So threads for such
work start few (``START``) and grow while completed items per second
rise and items take no longer than the quickest did (nothing queues at the
far end yet): doubled while a doubling pays nearly in proportion
(``PROPORTIONAL``); a doubling that pays less than ``GAIN`` goes back to
the level before it, one that pays less than in proportion or after which
items queue stays; the level then holds.
Sleeps scale without limit and skip the ramp.

``Ramp`` is pure: it is told when items complete and says how many may be
in flight; tests drive it with made-up clocks.
"""

from __future__ import annotations

START = 4  # items in flight at first
GAIN = 1.1  # a step that raises throughput less than this has stopped paying
PROPORTIONAL = 1.6  # a doubling that raised it this much: double again
MIN_WINDOW = 4  # completions per measurement, at least
QUEUEING = 1.25  # items this much slower than the quickest window's: they queue


class Ramp:
    """The in-flight level for one run's waiting work, up to ``cap``."""

    def __init__(self, cap: int, start: int = START) -> None:
        self.cap = max(1, cap)
        self.level = min(start, self.cap)
        self.best_level = self.level
        self.best_rate = 0.0
        self.settled = self.level == self.cap
        self._since: float | None = None  # when the current window began
        self._done = 0  # completions in it
        self._waited = 0.0  # ... and the seconds they took, together
        # Completions of items started before the last step, still to come:
        # at first, the first level's (their window would include the start).
        self._skip = self.level
        self.quickest = float("inf")  # the least seconds per item of a window

    def recap(self, cap: int) -> None:
        """A re-decision changed the cap: never above it; a ramp that stopped
        only at the old cap goes on."""
        cap = max(1, cap)
        if cap > self.cap and self.settled and self.level == self.cap:
            self.settled = False
        self.cap = cap
        self.level = min(self.level, cap)
        self.best_level = min(self.best_level, cap)

    def started(self, now: float) -> None:
        """Work went out: the first window starts with it."""
        if self._since is None:
            self._since = now

    def completed(self, count: int, seconds: float, now: float) -> None:
        """``count`` items that took ``seconds`` together completed at
        ``now``; may move the level.

        A step is judged on the items started after it: the window opens
        once as many items as were in flight before the step have come back.
        """
        if self.settled or self._since is None:
            return
        if self._skip > 0:
            self._skip -= count
            if self._skip <= 0:
                self._since = now
            return
        self._done += count
        self._waited += seconds
        if self._done < max(self.level, MIN_WINDOW):
            return
        rate = self._done / max(now - self._since, 1e-9)
        latency = self._waited / self._done
        self._done, self._waited = 0, 0.0
        self._since, self._skip = now, self.level
        self.quickest = min(self.quickest, latency)
        self._step(rate, latency)

    def _step(self, rate: float, latency: float) -> None:
        if rate < self.best_rate * GAIN:
            self.level = self.best_level  # the last step did not pay
            self.settled = True
            return
        ratio = rate / self.best_rate if self.best_rate else PROPORTIONAL
        self.best_rate, self.best_level = rate, self.level
        if latency > QUEUEING * self.quickest:
            self.settled = True  # items queue at the far end: more would only wait longer
            return
        if ratio < PROPORTIONAL:
            self.settled = True  # the far end stops keeping up: this level is enough
            return
        self.level = min(self.cap, self.level * 2)
        self.settled = self.level == self.best_level
