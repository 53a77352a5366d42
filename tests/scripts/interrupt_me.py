"""Wait in MODE on long tasks until a single SIGINT arrives.

usage: interrupt_me.py MODE DIR   (MODE: map, imap, result, with)
Each task touches DIR/started-N when it starts, so the test knows when to
press Ctrl-C without sleeping.
"""

import os
import sys
import time

import concur


def long_task(args):
    directory, n = args
    open(os.path.join(directory, f"started-{n}"), "w").close()
    time.sleep(30)
    return n


def main(mode: str, directory: str) -> None:
    items = [(directory, n) for n in range(6)]
    if mode == "with":
        with concur.ProcessPool(2) as pool:
            for item in items:
                pool.submit(long_task, item)
            time.sleep(60)
        return
    pool = concur.ProcessPool(2)
    if mode == "map":
        list(pool.map(long_task, items, chunksize=1))
    elif mode == "imap":
        list(pool.imap(long_task, items, chunksize=1))
    else:
        futures = [pool.submit(long_task, item) for item in items]
        futures[0].result()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
