"""Hold shared memory in every way a pool can, print the pids, wait to be killed.

One worker runs a task whose large argument is mapped; the other has just
sent a large result the parent mapped; a concur.share() handle is open.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

import concur


def hold(array: np.ndarray, path: str) -> float:
    open(path, "w").close()
    time.sleep(60)
    return float(array[0])


def make(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.uint8)


if __name__ == "__main__":
    marker = sys.argv[1]
    pool = concur.ProcessPool(2)
    shared = concur.share(np.zeros(4 << 20, dtype=np.uint8))
    result = pool.submit(make, 8 << 20).result()
    running = pool.submit(hold, np.zeros(8 << 20, dtype=np.uint8), marker)
    other = pool.submit(hold, shared, marker + "-2")
    while not (os.path.exists(marker) and os.path.exists(marker + "-2")):
        time.sleep(0.01)
    print(" ".join(str(w.pid) for w in pool.workers()), flush=True)
    time.sleep(60)
