"""A pool of one worker stuck in a C call that holds the GIL; then wait to be killed.

usage: faults_gil_parent.py DIR
Prints "WORKER_PID FORKSERVER_PID" once the task runs (it touches DIR/started
first), then sleeps.
"""

import multiprocessing.forkserver
import os
import re
import sys
import time

import concur


def stuck_in_c(marker):
    with open(marker + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    # Catastrophic backtracking: hours of work in one C call that never
    # releases the GIL (28 a's already take ~20 s).
    re.match(r"(a*)*b", "a" * 40)


if __name__ == "__main__":
    marker = os.path.join(sys.argv[1], "started")
    pool = concur.ProcessPool(1)
    future = pool.submit(stuck_in_c, marker)
    deadline = time.monotonic() + 30
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            sys.exit("the task never started")
        time.sleep(0.01)
    with open(marker) as handle:
        worker = int(handle.read())
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    print(worker, server, flush=True)
    time.sleep(60)
    os._exit(0)
