"""Logging set up in the parent; a task logs and prints.

usage: faults_logging.py METHOD
Prints "worker PID" at the end; the worker's records should show up on
stderr in the parent's format.
"""

import logging
import os
import sys

import concur

log = logging.getLogger("app")


def chatty():
    log.debug("too quiet from %s", "task")
    log.info("hello from %s", "task")
    log.warning("careful from %s", "task")
    print("printed from task", flush=True)
    print("printed to stderr from task", file=sys.stderr, flush=True)
    return os.getpid()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(process)d %(processName)s %(levelname)s %(message)s"
    )
    with concur.ProcessPool(2, mp_context=sys.argv[1]) as pool:
        pid = pool.submit(chatty).result(timeout=30)
    print("worker", pid, flush=True)
