"""Round trips in the main thread while SIGINT arrives every millisecond.

Each KeyboardInterrupt is caught and the wait goes on: every future must
still settle. Prints "ok N" with the number of interrupts caught. As in a
program whose own threads leave Ctrl-C to the main thread, only the main
thread takes SIGINT, and only while it waits in result().
"""

import os
import signal
import threading
import time

import concur

if __name__ == "__main__":
    stop = threading.Event()

    def storm() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        while not stop.wait(0.001):
            os.kill(os.getpid(), signal.SIGINT)

    caught = 0
    with concur.ProcessPool(1) as pool:
        pool.submit(abs, 1).result(timeout=30)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        threading.Thread(target=storm, daemon=True).start()
        deadline = time.monotonic() + 4
        i = 0
        while time.monotonic() < deadline:
            i += 1
            future = pool.submit(abs, -i)  # SIGINT is blocked here
            while True:
                try:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                    value = future.result(timeout=10)
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                except KeyboardInterrupt:
                    caught += 1
                    continue
                assert value == i
                break
        stop.set()
    print("ok", caught, flush=True)
