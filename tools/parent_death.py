"""Time from a parent's SIGKILL to the exit of its last child, for docs/supervision.md.

    .venv/bin/python tools/parent_death.py [--runs 10]

Starts tests/scripts/pool_then_wait.py in each mode (a pool whose two workers
sleep, spin in Python, or sit in a C call that holds the GIL; two
concur.spawn processes), kills it
with SIGKILL once its workers are busy, and measures until no descendant is
left (the fork server included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

SCRIPT = Path(__file__).resolve().parent.parent / "tests" / "scripts" / "pool_then_wait.py"


def once(mode: str) -> float:
    parent = subprocess.Popen(
        [sys.executable, str(SCRIPT), mode], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    parent.stdout.readline()  # the worker pids: they are busy now
    descendants = [c.pid for c in psutil.Process(parent.pid).children(recursive=True)]
    parent.kill()
    killed = time.monotonic()
    parent.wait()
    while any(_alive(pid) for pid in descendants):
        time.sleep(0.001)
    return time.monotonic() - killed


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    for mode in ("pool-sleep", "pool-busy", "pool-gil", "spawn"):
        times = [once(mode) for _ in range(runs)]
        print(
            f"{mode:<11} median {statistics.median(times) * 1e3:6.1f} ms   "
            f"max {max(times) * 1e3:6.1f} ms   ({runs} runs)"
        )


if __name__ == "__main__":
    main()
