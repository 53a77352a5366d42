"""Lesson 9: a zombie process, made and reaped.

A child that exits stays in the process table as a zombie until its parent
collects its exit status with wait(). This script makes one on purpose,
shows its state, then reaps it. concur's pools reap each worker the moment
it exits, so they never leave one behind.

Run: python examples/09_zombie.py [--hold SECONDS]
While it holds, run `concur ps` in another terminal to see the zombie flagged.
"""

import os
import sys
import time

import psutil

import concur

if __name__ == "__main__":
    hold = float(sys.argv[sys.argv.index("--hold") + 1]) if "--hold" in sys.argv else 0.0
    pid = os.fork()
    if pid == 0:
        os._exit(7)  # the child exits at once
    time.sleep(0.2)
    print(f"child {pid} exited; its state is now: {psutil.Process(pid).status()}")
    if hold:
        print(f"holding {hold} s: run `concur ps {os.getpid()}` to see it", flush=True)
        time.sleep(hold)
    _, status = os.waitpid(pid, 0)
    print(f"reaped with waitpid: exit code {os.waitstatus_to_exitcode(status)}")
    print(f"is it still there? {psutil.pid_exists(pid)}")
    with concur.ProcessPool(2, max_tasks_per_child=1) as pool:
        pool_results = list(pool.map(abs, range(-20, 0)))
    zombies = [c for c in psutil.Process().children(recursive=True) if c.status() == "zombie"]
    print(f"a pool that replaced 20 workers left {len(zombies)} zombies")
