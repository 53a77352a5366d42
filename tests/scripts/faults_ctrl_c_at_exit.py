"""A script whose end waits for a long task: its pool finishes the work at exit.

Prints "exiting" and the worker's pid, then leaves the main module with a
30 s task still running; the test presses Ctrl-C while the exit waits.
"""

import sys
import time

import concur

if __name__ == "__main__":
    kind = sys.argv[1]
    pool = concur.ProcessPool(1) if kind == "process" else concur.ThreadPool(1)
    pid = pool.submit(__import__("os").getpid).result(timeout=30)
    pool.submit(time.sleep, 30)
    print("exiting", pid, flush=True)
