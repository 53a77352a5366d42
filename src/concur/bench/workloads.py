"""The work the benchmark times. Module-level functions, so every backend
(including the standard library's, which pickles by reference) can run them."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
import zlib
from dataclasses import dataclass
from typing import Any


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


def square(x: int) -> int:
    """A trivial call: far cheaper than any hand-off to a worker."""
    return x * x


def spin_ms(ms: float) -> float:
    """About ``ms`` milliseconds of pure-Python computing (holds the GIL)."""
    count_to(int(ms * _COUNTS_PER_MS))
    return ms


def cache_then_compute(x: int) -> int:
    """Cheap for the first items (a "cache hit"), then 25 ms of computing each."""
    if x < CACHE_HITS:
        return x
    count_to(int(25 * _COUNTS_PER_MS))
    return x


def mixed(x: int) -> int:
    """Half the items wait 20 ms, half compute 20 ms."""
    if x % 2:
        time.sleep(0.02)
    else:
        count_to(int(20 * _COUNTS_PER_MS))
    return x


CACHE_HITS = 2000
# Counting steps per millisecond on a typical 2020s CPU with CPython 3.11;
# workloads say "about" because machines differ.
_COUNTS_PER_MS = 40_000


def crash_one(args: tuple[int, int, int, float]) -> int:
    """About ``ms`` of computing; item ``crash_at`` kills its worker process.

    In the benchmark's own process (a thread or serial backend, or auto
    choosing one) it raises instead, so the benchmark survives to report it.
    """
    index, crash_at, bench_pid, ms = args
    count_to(int(ms * _COUNTS_PER_MS))
    if index == crash_at:
        if os.getpid() != bench_pid:
            os._exit(1)
        raise RuntimeError("this task would have killed the whole process")
    return index


_BLOCKS: dict[int, bytes] = {}


def _block(size: int) -> bytes:
    """``size`` bytes, made once per process: compressible, as real data is."""
    block = _BLOCKS.get(size)
    if block is None:
        line = b"".join(b"%08d concur benchmark data, line %d\n" % (i, i % 97) for i in range(4096))
        block = _BLOCKS[size] = (line * (size // len(line) + 1))[:size]
    return block


def sha256_block(mb: int) -> str:
    """SHA-256 of an ``mb`` MB block: C code that releases the GIL."""
    return hashlib.sha256(_block(mb << 20)).hexdigest()


def compress_block(mb: int) -> int:
    """zlib of an ``mb`` MB block: C code that releases the GIL."""
    return len(zlib.compress(_block(mb << 20), 6))


def http_get(url: str) -> int:
    """One GET; the length of the body."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return len(response.read())


def nested(n: int) -> int:
    """A task that itself runs ``concur.map`` over 8 items of counting to ``n``."""
    from .. import api

    return sum(api.map(count_to, [n] * 8))


def counts_for(ms: float) -> int:
    """How far ``count_to`` counts in about ``ms`` milliseconds."""
    return int(ms * _COUNTS_PER_MS)


def array_total(array: Any) -> float:
    """Reads all of a (large) array: its sum."""
    return float(array.sum())


def shared_total(array: Any, _index: int) -> float:
    """``array_total`` for mpire's ``shared_objects`` (the object comes first)."""
    return array_total(array)


@dataclass(frozen=True)
class Fill:
    """What ``filled`` makes (one argument, not a tuple: mpire unpacks tuples)."""

    size: int
    value: int


def filled(spec: Fill) -> Any:
    """A new array of ``spec.size`` bytes, every byte ``spec.value``."""
    import numpy as np

    return np.full(spec.size, spec.value, dtype=np.uint8)
