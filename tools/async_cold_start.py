"""How late a 10 ms ticker runs while a fresh program makes its first
50 concurrent ``concur.arun`` calls (0.3 s of blocking work each, on
threads), for docs/async.md.

    .venv/bin/python tools/async_cold_start.py [asyncio|trio]

Run it in a fresh process each time: the point is the first call, which
imports concur's engine.
"""

from __future__ import annotations

import sys
import time

import anyio


def blocking(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


async def main() -> None:
    import concur

    late: list[float] = []
    done = anyio.Event()

    async def tick() -> None:
        while not done.is_set():
            started = time.monotonic()
            await anyio.sleep(0.01)
            late.append(time.monotonic() - started - 0.01)

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        await anyio.sleep(0.05)
        async with anyio.create_task_group() as calls:
            for i in range(50):
                calls.start_soon(concur.arun, blocking, i, 0.3)
        done.set()
    late.sort()
    p90 = late[int(len(late) * 0.9)]
    print(f"ticker late: worst {1000 * late[-1]:.1f} ms, p90 {1000 * p90:.1f} ms")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
