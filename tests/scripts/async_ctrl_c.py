"""Ctrl-C while an event loop awaits a call that hangs in a process.

Arguments: the event loop (asyncio or trio), what awaits (``pool`` for
``ProcessPool.arun``, ``run`` for ``concur.arun``), and a file for the
worker's pid. The worker writes its pid there and sleeps for an hour; the
test presses Ctrl-C and expects "interrupted" and the worker gone.
"""

import os
import sys
import time

import anyio

import concur


def hang(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(3600)


async def main(how, path):
    if how == "pool":
        with concur.ProcessPool(1) as pool:
            await pool.arun(hang, path)
    else:
        await concur.arun(hang, path, backend="process")


if __name__ == "__main__":
    try:
        anyio.run(main, sys.argv[2], sys.argv[3], backend=sys.argv[1])
    except KeyboardInterrupt:
        print("interrupted", flush=True)
