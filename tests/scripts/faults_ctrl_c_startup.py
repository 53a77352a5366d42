"""Start a pool and map a short function; the test presses Ctrl-C meanwhile.

usage: faults_ctrl_c_startup.py [SECONDS]   (each task sleeps SECONDS, default 0)
"""

import sys
import time

import concur


def square(x):
    if len(sys.argv) > 1:
        time.sleep(float(sys.argv[1]))
    return x * x


if __name__ == "__main__":
    pool = concur.ProcessPool(2)
    print(sum(pool.map(square, range(40), chunksize=1)), flush=True)
