"""A program that forks after concur.map left its workers warm: the child
must start its own (the parent's pools belong to the parent)."""

import os
import sys
import time

import concur


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


if __name__ == "__main__":
    parent = sorted(set(concur.map(pid_after, [0.01] * 6, backend="process")))
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        pids = sorted(set(concur.map(pid_after, [0.01] * 6, backend="process")))
        os.write(write, " ".join(map(str, pids)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = pipe.read()
    _, status = os.waitpid(child, 0)
    print(" ".join(map(str, parent)))
    print(seen)
    sys.exit(os.waitstatus_to_exitcode(status))
