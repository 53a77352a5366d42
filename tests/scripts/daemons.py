"""The seed's daemon lesson: print what survives the end of the main program.

usage: daemons.py KIND DAEMON DIR
A worker sleeps 0.5 s then writes DIR/finished; the main program ends at once.
"""

import os
import sys
import time

import concur


def slow_write(directory):
    time.sleep(0.5)
    with open(os.path.join(directory, "finished"), "w") as handle:
        handle.write("done")


if __name__ == "__main__":
    kind, daemon, directory = sys.argv[1], sys.argv[2] == "daemon", sys.argv[3]
    worker = concur.spawn(slow_write, directory, kind=kind, daemon=daemon)
    print(worker.pid, flush=True)
