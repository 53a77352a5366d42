"""No main guard on purpose: a ProcessPool made at the top level of a script.

usage: faults_unguarded.py METHOD
A concur that never re-runs the main module in its workers runs this once
and prints each result once.
"""

import sys

import concur


def triple(x):
    return 3 * x


pool = concur.ProcessPool(2, mp_context=sys.argv[1])
print(list(pool.map(triple, range(5))), flush=True)
print(pool.submit(lambda: "lambda ok").result(timeout=30), flush=True)
pool.shutdown()
