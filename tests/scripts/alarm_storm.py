"""Round trips in the main thread while a timer signal whose handler raises
arrives every 50 microseconds (as in a program that times its calls out
with ``signal.setitimer``).

Every interrupted wait goes on; each future must settle, with its value or,
where the interrupt tore a reply out of the pipe, with ``WorkerCrashed``;
afterwards the pool still serves and the main thread takes signals again.
Prints "ok INTERRUPTS LOST". With the
argument ``thread``, a thread of the program that takes signals runs
beside: the kernel gives it the signals the main thread holds back.
"""

import os
import signal
import sys
import threading
import time

import concur
from concur import WorkerCrashed


class Tick(Exception):
    pass


# Raise only inside result(), once per arming: the script's own code is not
# what is tested.
armed = False


def tick(signum, frame):
    global armed
    if armed:
        armed = False
        raise Tick


def nap(i):
    time.sleep(0.0002)  # the caller waits in its poll, where most signals land
    return abs(i)


if __name__ == "__main__":
    caught = lost = 0
    if sys.argv[1:] == ["thread"]:
        threading.Thread(target=lambda: time.sleep(3600), daemon=True).start()
    with concur.ProcessPool(1) as pool:
        pool.submit(abs, 1).result(timeout=30)
        signal.signal(signal.SIGALRM, tick)
        signal.setitimer(signal.ITIMER_REAL, 0.00005, 0.00005)
        deadline = time.monotonic() + 3
        i = 0
        while time.monotonic() < deadline:
            i += 1
            future = pool.submit(nap if i % 2 else abs, -i)
            while True:
                try:
                    armed = True
                    value = future.result(timeout=10)
                    armed = False
                except Tick:
                    caught += 1
                    if time.monotonic() > deadline + 10:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                        print("hung: task", i, "never settled", flush=True)
                        os._exit(1)
                    continue
                except WorkerCrashed:
                    armed = False
                    lost += 1
                    break
                assert value == i, (value, i)
                break
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert list(pool.map(abs, range(-200, 0), timeout=30)) == list(range(200, 0, -1))
    # Every wait restored the mask it found: Ctrl-C and the program's own
    # signals still reach the main thread.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert not blocked, f"signals left blocked in the main thread: {sorted(blocked)}"
    print("ok", caught, lost, flush=True)
