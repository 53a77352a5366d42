"""The work the benchmark times. Module-level functions, so every backend
(including the standard library's, which pickles by reference) can run them."""

from __future__ import annotations

import time


def count_to(n: int) -> int:
    """Pure-Python counting: holds the GIL the whole time (CPU-bound)."""
    count = 0
    while count < n:
        count += 1
    return count


def sleep_for(seconds: float) -> float:
    """Waits without computing, as IO does (releases the GIL)."""
    time.sleep(seconds)
    return seconds


def noop(x: int = 0) -> int:
    return x
