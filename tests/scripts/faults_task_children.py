"""A task that leaves a process of its own behind.

usage: faults_task_children.py MODE DIR
  sleep: the task starts `sleep 1000`, writes its pid to DIR/child, then
         blocks; the program prints "ready" and waits to be killed.
  fork:  the task os.fork()s a grandchild that sleeps 30 s, writes its pid to
         DIR/child and returns; the program prints "GRANDCHILD FORKSERVER"
         and exits normally.
"""

import multiprocessing.forkserver
import os
import subprocess
import sys
import time

import concur


def _publish(directory, pid):
    path = os.path.join(directory, "child")
    with open(path + ".tmp", "w") as handle:
        handle.write(str(pid))
    os.rename(path + ".tmp", path)


def start_sleep_then_block(directory):
    child = subprocess.Popen(["sleep", "1000"])
    _publish(directory, child.pid)
    time.sleep(60)


def fork_grandchild(directory):
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    _publish(directory, pid)
    return pid


if __name__ == "__main__":
    mode, directory = sys.argv[1], sys.argv[2]
    if mode == "sleep":
        pool = concur.ProcessPool(2)
        future = pool.submit(start_sleep_then_block, directory)
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(directory, "child")):
            if time.monotonic() > deadline:
                sys.exit("the task never started its child")
            time.sleep(0.01)
        print("ready", flush=True)
        time.sleep(60)
        os._exit(0)
    else:
        with concur.ProcessPool(2) as pool:
            grandchild = pool.submit(fork_grandchild, directory).result(timeout=30)
            server = multiprocessing.forkserver._forkserver._forkserver_pid
        print(grandchild, server, flush=True)
