"""Start workers busy with long tasks, print their pids, then wait to be killed.

usage: pool_then_wait.py MODE   (MODE: pool-sleep, pool-busy, pool-gil, spawn)
"""

import os
import re
import sys
import time

import concur


def sleeper():
    time.sleep(60)


def busy():
    count = 0
    while True:
        count += 1


def in_c():
    # Catastrophic backtracking: minutes inside the regex engine, GIL held.
    re.match(r"(a*)*b", "a" * 40)


TARGETS = {"pool-sleep": sleeper, "pool-busy": busy, "pool-gil": in_c}


def main(mode: str) -> None:
    if mode == "spawn":
        workers = [concur.spawn(sleeper), concur.spawn(busy)]
        pids = [w.pid for w in workers]
    else:
        pool = concur.ProcessPool(2)
        target = TARGETS[mode]
        futures = [pool.submit(target) for _ in range(2)]
        while sum(w.state == "busy" for w in pool.workers()) < 2:
            time.sleep(0.01)
        pids = [w.pid for w in pool.workers()]
        del futures
    print(" ".join(map(str, pids)), flush=True)
    time.sleep(60)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
