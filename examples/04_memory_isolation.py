"""Lesson 4: processes do not share memory; threads do.

Four processes each add 1 to a counter that starts at 100: each works on
its own copy, so each sees 101 and the main program's counter stays 100.
Four threads share one counter, which reaches 104.

Run: python examples/04_memory_isolation.py
"""

import threading

import concur

counter = 100
lock = threading.Lock()


def add_one() -> int:
    """In a process: its own copy of the counter."""
    global counter
    counter += 1
    return counter


def add_one_shared() -> int:
    """In a thread: the one counter every thread shares, so take turns."""
    global counter
    with lock:
        counter += 1
        return counter


if __name__ == "__main__":
    seen = [concur.spawn(add_one, kind="process").result(timeout=30) for _ in range(4)]
    print(f"each process saw its own copy: {seen}; main counter is still {counter}")
    threads = [concur.spawn(add_one_shared, kind="thread") for _ in range(4)]
    for handle in threads:
        handle.join()
    print(f"four threads shared one counter: it reached {counter}")
    print("to share between processes, send results back (as above) or use a database")
