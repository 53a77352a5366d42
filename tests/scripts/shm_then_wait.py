"""Hold shared memory in every way a pool can, print the pids, wait to be killed.

One worker runs a task whose large argument is mapped; the other has just
sent a large result the parent mapped; a concur.share() handle is open; a
concur.spawn() child holds a large result no one has read yet. The first
line names the pool's workers, the second the spawned child.
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


def holds_memory(pid: int) -> bool:
    """Whether the process holds a concur segment open (its fds change meanwhile)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "memfd:concur-" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                return True
        except OSError:
            continue
    return False


if __name__ == "__main__":
    marker = sys.argv[1]
    pool = concur.ProcessPool(2)
    shared = concur.share(np.zeros(4 << 20, dtype=np.uint8))
    result = pool.submit(make, 8 << 20).result()
    running = pool.submit(hold, np.zeros(8 << 20, dtype=np.uint8), marker)
    other = pool.submit(hold, shared, marker + "-2")
    while not (os.path.exists(marker) and os.path.exists(marker + "-2")):
        time.sleep(0.01)
    unread = concur.spawn(make, 8 << 20)
    while not holds_memory(unread.pid):
        time.sleep(0.01)
    print(" ".join(str(w.pid) for w in pool.workers()), flush=True)
    print(unread.pid, flush=True)
    time.sleep(60)
