"""Lesson 10: an orphan process, adopted by init; concur's workers never become one.

When a parent exits before its child, the child is adopted by init (pid 1)
or by a subreaper, and runs on with no one to collect its result. The script
starts a parent that starts a child and exits at once, and shows the child's
new parent. Then it does the same with a concur pool in a parent that is
killed with SIGKILL: the pool's workers exit within a second.

Run: python examples/10_orphan.py [--hold SECONDS]
While it holds, run `concur ps PID` (the orphan's pid, printed) to see it flagged.
"""

import os
import signal
import subprocess
import sys
import time

import psutil

PARENT = """
import subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(60)"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(child.pid, flush=True)
"""

POOL_PARENT = """
import time, concur
def nap(x):
    time.sleep(60)
if __name__ == "__main__":
    pool = concur.ProcessPool(2)
    futures = [pool.submit(nap, i) for i in range(2)]
    while len([w for w in pool.workers() if w.state == "busy"]) < 2:
        time.sleep(0.05)
    print(" ".join(str(w.pid) for w in pool.workers()), flush=True)
    time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    hold = float(sys.argv[sys.argv.index("--hold") + 1]) if "--hold" in sys.argv else 0.0
    parent = subprocess.run(
        [sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=60
    )
    orphan = int(parent.stdout)
    adopter = psutil.Process(orphan).ppid()
    name = psutil.Process(adopter).name()
    print(f"the parent exited; its child {orphan} now has parent {adopter} ({name})")
    if hold:
        print(f"holding {hold} s: run `concur ps {orphan}` to see it flagged", flush=True)
        time.sleep(hold)
    os.kill(orphan, signal.SIGTERM)
    print(f"stopped the orphan {orphan}")

    pool_parent = subprocess.Popen(
        [sys.executable, "-c", POOL_PARENT], stdout=subprocess.PIPE, text=True
    )
    assert pool_parent.stdout is not None
    workers = [int(pid) for pid in pool_parent.stdout.readline().split()]
    print(f"a parent with a concur pool; its workers {workers} are busy")
    pool_parent.kill()  # SIGKILL: no chance to clean up
    pool_parent.wait()
    start = time.monotonic()
    while any(alive(pid) for pid in workers) and time.monotonic() - start < 5:
        time.sleep(0.02)
    left = [pid for pid in workers if alive(pid)]
    took = time.monotonic() - start
    print(f"parent killed with SIGKILL; workers still running after {took:.2f} s: {left}")
