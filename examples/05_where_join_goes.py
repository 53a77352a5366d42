"""Lesson 5: where join() goes decides whether the work overlaps.

join() inside the loop that starts the workers waits for each before the
next starts: the work runs one at a time. Start them all, then join: they
overlap. concur.map does the second for you.

Run: python examples/05_where_join_goes.py
"""

import threading
import time

import concur


def nap() -> None:
    time.sleep(0.2)


def timed(label: str, body) -> float:
    start = time.perf_counter()
    body()
    took = time.perf_counter() - start
    print(f"{label:34} {took:.2f} s")
    return took


def join_inside() -> None:
    for _ in range(4):
        thread = threading.Thread(target=nap)
        thread.start()
        thread.join()  # waits here: the next one has not started yet


def join_after() -> None:
    threads = [threading.Thread(target=nap) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    inside = timed("join inside the loop (serial):", join_inside)
    after = timed("start all, then join (overlap):", join_after)
    timed("concur.map (chooses for you):", lambda: concur.map(lambda _: nap(), range(4)))
    print(f"joining inside the loop took {inside / after:.1f}x as long")
