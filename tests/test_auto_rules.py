"""Auto's rules as tables: synthetic measurements in, a Decision out.

``choose()`` reads no clock, so each row is exact: what a run measured
per item (wall and CPU seconds, pickling cost, CPU used by two threads
at once), how many items are left, and where the rest must run.
"""

from __future__ import annotations

import pytest

from concur.auto import Measurements, choose, estimate


def m(wall, cpu, *, cores=2, transfer=1e-6, utilization=None, gil=True, warm=False, released=False):
    return Measurements(
        items=5,
        wall=wall,
        cpu=cpu,
        transfer=transfer,
        utilization=utilization,
        released=released,
        cores=cores,
        gil=gil,
        warm=warm,
    )


# (why, measurements, items left, backend, workers or None, chunk or None, words in the reason)
RULES = [
    ("waiting: threads = cores × wall/CPU", m(0.1, 0.001), 1000, "thread", 200, 1, "waiting"),
    ("waiting: at most 256 threads", m(1.0, 1e-6), 10_000, "thread", 256, 1, "waiting"),
    ("waiting: never more threads than items", m(1.0, 1e-6), 40, "thread", 40, 1, "waiting"),
    (
        "GIL-bound: a process per core, 10 ms chunks",
        m(0.001, 0.001, cores=4),
        10_000,
        "process",
        4,
        10,
        "4 cores → 4 processes",
    ),
    ("tiny items: inline", m(1e-7, 1e-7), 100_000, "inline", 1, None, "handing it to a worker"),
    ("little work left: inline", m(0.0001, 0.0001), 5, "inline", 1, None, "all that is left"),
    ("nothing left: inline", m(0.01, 0.01), 0, "inline", 1, 1, "every item ran"),
    (
        "no GIL: threads for CPU work",
        m(0.001, 0.001, gil=False),
        10_000,
        "thread",
        2,
        None,
        "no GIL",
    ),
    (
        "two threads used 1.9 CPUs: GIL released",
        m(0.001, 0.001, utilization=1.9),
        10_000,
        "thread",
        2,
        None,
        "GIL is released",
    ),
    (
        "threads side by side on a core the host shared: GIL released",
        m(0.001, 0.001, utilization=1.0, released=True),
        10_000,
        "thread",
        2,
        None,
        "none waiting for the GIL",
    ),
    (
        "two threads used 1.1 CPUs: GIL held",
        m(0.001, 0.001, utilization=1.1),
        10_000,
        "process",
        2,
        None,
        "2 cores",
    ),
    ("one CPU: nothing to gain", m(0.01, 0.01, cores=1), 1000, "inline", 1, None, "one CPU"),
    (
        "arguments dearer to send than to compute",
        m(0.001, 0.001, transfer=0.01),
        1000,
        "inline",
        1,
        None,
        "too little work",
    ),
    (
        "unpicklable: never processes",
        m(0.01, 0.01, transfer=float("inf")),
        1000,
        "inline",
        1,
        None,
        "",
    ),
    ("a cold pool is not worth 5 items", m(0.005, 0.005), 5, "inline", 1, None, ""),
    ("a warm pool is", m(0.005, 0.005, warm=True), 5, "process", 2, None, ""),
    (
        "open-ended CPU work: processes",
        m(0.001, 0.001),
        None,
        "process",
        2,
        None,
        "for 1,000,000 items",
    ),
]


@pytest.mark.parametrize(
    ("measured", "left", "backend", "workers", "chunk", "words"),
    [row[1:] for row in RULES],
    ids=[row[0] for row in RULES],
)
def test_rules(measured, left, backend, workers, chunk, words):
    d = choose(measured, remaining=left)
    assert d.backend == backend, d
    assert d.workers == workers, d
    if chunk is not None:
        assert d.chunksize == chunk, d
    assert words in d.reason, d
    assert d.measurements is measured


# (measurements, items, fastest by the estimate)
ESTIMATES = [
    (m(0.01, 0.01), 100, "process"),
    (m(0.01, 0.0001), 100, "thread"),
    (m(1e-6, 1e-6), 100, "inline"),
    (m(0.01, 0.01, utilization=1.9), 100, "thread"),
]


@pytest.mark.parametrize(("measured", "n", "fastest"), ESTIMATES)
def test_estimates_rank_the_backends(measured, n, fastest):
    times, threads = estimate(measured, n)
    assert min(times, key=times.__getitem__) == fastest
    assert 1 <= threads <= n
    assert times["inline"] == pytest.approx(n * measured.wall)


def _ramp_against(capacity: int, service_s: float, cap: int = 256) -> tuple[int, int]:
    """Drive a Ramp with a server that serves ``capacity`` at a time, each in
    ``service_s``; at L in flight items take service × L / capacity (they
    queue) once L passes the capacity. Returns (settled level, highest)."""
    from concur.auto.ramp import Ramp

    ramp = Ramp(cap)
    now = 0.0
    ramp.started(now)
    highest = ramp.level
    for _ in range(5_000):
        if ramp.settled:
            break
        latency = service_s * max(1.0, ramp.level / capacity)
        now += latency / ramp.level  # one completion per latency / level
        ramp.completed(1, latency, now)
        highest = max(highest, ramp.level)
    assert ramp.settled
    return ramp.level, highest


# (capacity of the far end, where the level may settle, the most it may ever reach)
RAMPS = [
    (1, (1, 5), 8),  # the first doubling, before any step shows queueing
    (5, (5, 10), 10),  # a backlog of 5 holds 6 more: 11 in flight drop no SYN
    (20, (20, 40), 40),
    (100, (100, 200), 200),
    (10**6, (256, 256), 256),  # no limit: up to the cap
]


@pytest.mark.parametrize(("capacity", "settles", "most"), RAMPS)
def test_a_ramp_finds_the_capacity_without_overshooting_it(capacity, settles, most):
    level, highest = _ramp_against(capacity, 0.02)
    assert settles[0] <= level <= settles[1]
    assert highest <= most


def test_a_ramp_never_passes_its_cap_and_starts_small():
    from concur.auto.ramp import START, Ramp

    assert Ramp(2).level == 2
    assert Ramp(100).level == START
    assert _ramp_against(10**6, 0.02, cap=10) == (10, 10)
