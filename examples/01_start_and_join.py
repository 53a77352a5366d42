"""Lesson 1: start processes and threads, pass them arguments, join them.

The standard library way (multiprocessing.Process / threading.Thread) side by
side with concur.spawn, which returns a handle whose result() gives back what
the function returned, including an exception raised in the child.

Run: python examples/01_start_and_join.py
"""

import multiprocessing
import os
import threading

import concur


def greet(who: str, times: int) -> str:
    text = f"hello {who} x{times} from pid {os.getpid()}"
    print(f"  {threading.current_thread().name}: {text}")
    return text


if __name__ == "__main__":
    print("stdlib: a process and a thread, started and joined")
    proc = multiprocessing.Process(target=greet, args=("process", 1), name="stdlib-process")
    thread = threading.Thread(target=greet, args=("thread", 2), name="stdlib-thread")
    proc.start()
    thread.start()
    proc.join()
    thread.join()
    print(f"  the process exited with code {proc.exitcode}; its return value is lost")

    print("concur.spawn: the same, and the return value comes back")
    workers = [
        concur.spawn(greet, "process", 3, kind="process", name="concur-process"),
        concur.spawn(greet, "thread", 4, kind="thread", name="concur-thread"),
    ]
    for worker in workers:
        print(f"  {worker.name} returned: {worker.result(timeout=30)!r}")
    print("every process and thread has ended: nothing to clean up")
