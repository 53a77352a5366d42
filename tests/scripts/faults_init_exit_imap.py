"""An endless imap on a pool whose initializer always exits the worker.

usage: faults_init_exit_imap.py DIR
Each worker start touches DIR/start-PID. When the imap raises, prints
"raised TYPE SECONDS broken=BOOL" (BOOL: the error is a ProcessPoolBroken)
and then the message; prints "still running" if it yields for 10 s. Waits
0.5 s before the shutdown, so that any further worker starts are counted.
"""

import itertools
import os
import sys
import time

import concur


def die_in_initializer(directory):
    open(os.path.join(directory, f"start-{os.getpid()}"), "w").close()
    os._exit(3)


if __name__ == "__main__":
    pool = concur.ProcessPool(2, initializer=die_in_initializer, initargs=(sys.argv[1],))
    started = time.monotonic()
    try:
        for _ in pool.imap(abs, itertools.count()):
            if time.monotonic() - started > 10:
                print("still running", flush=True)
                break
    except BaseException as exc:
        took = time.monotonic() - started
        broken = isinstance(exc, concur.ProcessPoolBroken)
        print(f"raised {type(exc).__name__} {took:.3f} broken={broken}", flush=True)
        print(str(exc).replace("\n", " "), flush=True)
    time.sleep(0.5)  # a pool that goes on restarting workers shows it now
    pool.shutdown(wait=True, cancel_futures=True)
