"""A program fed to ``python - METHOD`` on stdin (so its main module is no file).

Prints the results of a function and of a lambda defined here, run on a
ProcessPool with the start method METHOD.
"""

import sys

import concur


def triple(x):
    return 3 * x


if __name__ == "__main__":
    with concur.ProcessPool(2, mp_context=sys.argv[1]) as pool:
        print(list(pool.map(triple, range(5))), flush=True)
        print(list(pool.map(lambda x: x + 1, range(5))), flush=True)
        print(pool.submit(triple, 7).result(timeout=30), flush=True)
