"""Two workers print many lines to stderr at once; the parent logs meanwhile.

usage: faults_stderr_lines.py METHOD LINES
"""

import logging
import sys
import time

import concur

log = logging.getLogger("app")


def shout(tag, lines):
    time.sleep(0.2)  # both workers up: their prints overlap
    for i in range(lines):
        print(f"{tag} line {i}", file=sys.stderr)
        if i % 100 == 0:
            log.warning("%s logged %d", tag, i)
    return tag


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    lines = int(sys.argv[2])
    with concur.ProcessPool(2, mp_context=sys.argv[1]) as pool:
        print(list(pool.map(shout, ["a", "b"], [lines, lines], chunksize=1)), flush=True)
