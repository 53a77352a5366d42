"""The Executor contract, for ThreadPool and ProcessPool under every start method.

Written against the behaviour of concurrent.futures' own executors, so code
that uses them switches to concur by changing one line.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import (
    BrokenExecutor,
    CancelledError,
    Future,
    as_completed,
    wait,
)
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool

import pytest

import concur

POOLS = ["thread", "process-fork", "process-forkserver", "process-spawn"]


def make_pool(kind: str, **kwargs):
    if kind == "thread":
        return concur.ThreadPool(**kwargs)
    return concur.ProcessPool(mp_context=kind.split("-", 1)[1], **kwargs)


@pytest.fixture(params=POOLS)
def pool_kind(request):
    return request.param


@pytest.fixture
def pool(pool_kind):
    executor = make_pool(pool_kind, max_workers=2)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def square(x):
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def slow_identity(x, delay=0.2):
    time.sleep(delay)
    return x


def add(a, b, *, c=0):
    return a + b + c


def test_submit_returns_result(pool):
    assert pool.submit(add, 1, 2, c=3).result(timeout=30) == 6


def test_exception_keeps_its_type(pool):
    future = pool.submit(fail_on, 3, 3)
    with pytest.raises(ValueError, match="bad item 3"):
        future.result(timeout=30)
    assert isinstance(future.exception(), ValueError)


def test_map_keeps_order_for_any_chunksize(pool):
    items = list(range(50))
    expected = [x * x for x in items]
    assert list(pool.map(square, items)) == expected
    assert list(pool.map(square, items, chunksize=1)) == expected
    assert list(pool.map(square, items, chunksize=7)) == expected
    assert list(pool.map(square, items, chunksize="auto")) == expected


def test_map_zips_several_iterables_and_stops_at_the_shortest(pool):
    assert list(pool.map(add, [1, 2, 3], [10, 20])) == [11, 22]


def test_map_yields_results_before_the_failed_item_then_raises(pool):
    results = pool.map(fail_on, range(10), [4] * 10, chunksize=3)
    got = []
    with pytest.raises(ValueError, match="bad item 4"):
        for value in results:
            got.append(value)
    assert got == [0, 1, 2, 3]


def test_map_of_nothing_is_empty(pool):
    assert list(pool.map(square, [])) == []


def test_map_timeout_raises_timeout_error(pool):
    results = pool.map(slow_identity, [0, 1, 2, 3], [1.0] * 4, timeout=0.2, chunksize=1)
    started = time.monotonic()
    with pytest.raises(FuturesTimeout):
        list(results)
    assert time.monotonic() - started < 0.9


@pytest.mark.parametrize("bad", [-1, float("nan"), "soon"])
def test_map_rejects_bad_timeouts(pool, bad):
    with pytest.raises(ValueError, match="timeout"):
        pool.map(square, [1], timeout=bad)


def test_rejects_bad_chunksize(pool):
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(square, [1], chunksize=0)


def test_future_states(pool):
    gate = pool.submit(slow_identity, "first", 0.3)
    second = pool.submit(slow_identity, "second", 0.3)
    queued = pool.submit(slow_identity, "third", 0.3)
    assert not queued.done()
    assert queued.cancel() is True
    assert queued.cancelled()
    with pytest.raises(CancelledError):
        queued.result()
    assert gate.result(timeout=30) == "first"
    assert gate.done()
    assert not gate.running()
    assert not gate.cancelled()
    assert gate.cancel() is False
    assert second.result(timeout=30) == "second"


def test_running_state_is_reported(pool):
    future = pool.submit(slow_identity, 1, 0.5)
    deadline = time.monotonic() + 10
    while not future.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert future.running()
    assert future.result(timeout=30) == 1


def test_done_callbacks_as_completed_and_wait(pool):
    seen = []
    event = threading.Event()

    def callback(f: Future) -> None:
        seen.append(f.result())
        event.set()

    f = pool.submit(square, 9)
    f.add_done_callback(callback)
    assert event.wait(30)
    assert seen == [81]
    futures = [pool.submit(square, i) for i in range(6)]
    assert sorted(f.result() for f in as_completed(futures, timeout=30)) == [
        0,
        1,
        4,
        9,
        16,
        25,
    ]
    done, not_done = wait(futures, timeout=30)
    assert len(done) == 6
    assert not not_done


def test_submit_after_shutdown_raises_runtime_error(pool_kind):
    executor = make_pool(pool_kind, max_workers=1)
    executor.submit(square, 2).result(timeout=30)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 2)
    with pytest.raises(concur.PoolClosed):
        executor.submit(square, 2)


def test_shutdown_of_an_unused_pool(pool_kind):
    make_pool(pool_kind, max_workers=1).shutdown()


def test_shutdown_cancel_futures_cancels_queued_work(pool_kind):
    executor = make_pool(pool_kind, max_workers=1)
    running = executor.submit(slow_identity, "running", 0.5)
    queued = [executor.submit(slow_identity, i, 0.5) for i in range(5)]
    time.sleep(0.1)
    executor.shutdown(wait=True, cancel_futures=True)
    assert running.result(timeout=1) == "running"
    assert all(f.cancelled() for f in queued)


def test_shutdown_without_wait_still_finishes_queued_work(pool_kind):
    executor = make_pool(pool_kind, max_workers=1)
    futures = [executor.submit(slow_identity, i, 0.05) for i in range(4)]
    executor.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futures] == [0, 1, 2, 3]
    executor.shutdown(wait=True)


def test_context_manager_waits_for_work(pool_kind):
    with make_pool(pool_kind, max_workers=2) as executor:
        futures = [executor.submit(slow_identity, i, 0.1) for i in range(4)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 2, 3]


def test_initializer_runs_in_every_worker(pool_kind):
    # Each worker records the initializer's argument in its own state.
    with make_pool(
        pool_kind, max_workers=2, initializer=_remember, initargs=("ready",)
    ) as executor:
        assert set(executor.map(_recall, range(6))) == {"ready"}


_STATE: dict[str, str] = {}


def _remember(value):
    _STATE["init"] = value


def _recall(_):
    time.sleep(0.01)
    return _STATE.get("init")


def _broken_initializer():
    raise OSError("no database")


def test_initializer_failure_breaks_the_pool_like_the_stdlib(pool_kind):
    executor = make_pool(pool_kind, max_workers=1, initializer=_broken_initializer)
    broken = BrokenThreadPool if pool_kind == "thread" else BrokenProcessPool
    future = executor.submit(square, 3)
    with pytest.raises(broken, match="no database"):
        future.result(timeout=30)
    with pytest.raises(broken):
        executor.submit(square, 3)
    executor.shutdown()


def test_initializer_failure_breaks_the_pool_even_when_shut_down_at_once(pool_kind):
    # The with-block closes the pool before the failing worker has exited.
    with make_pool(pool_kind, max_workers=1, initializer=_broken_initializer) as executor:
        futures = [executor.submit(square, i) for i in range(3)]
    broken = BrokenThreadPool if pool_kind == "thread" else BrokenProcessPool
    for future in futures:
        with pytest.raises(broken, match="no database"):
            future.result(timeout=30)


def test_initializer_failure_is_logged_like_the_stdlib(pool_kind, caplog):
    # The stdlib logs it on "concurrent.futures" at CRITICAL; a process
    # pool's worker logs it there too and the record is forwarded here.
    executor = make_pool(pool_kind, max_workers=1, initializer=_broken_initializer)
    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        with pytest.raises(BrokenExecutor):
            executor.submit(square, 3).result(timeout=30)
        executor.shutdown()
    records = [r for r in caplog.records if r.name == "concurrent.futures"]
    assert [r.getMessage() for r in records] == ["Exception in initializer:"]
    assert records[0].levelno == logging.CRITICAL
    assert "OSError: no database" in caplog.text


@pytest.mark.parametrize("workers", [0, -1])
def test_bad_worker_counts_are_refused(pool_kind, workers):
    with pytest.raises(ValueError, match="max_workers"):
        make_pool(pool_kind, max_workers=workers)


def test_default_worker_count_matches_the_stdlib(pool_kind):
    import os

    executor = make_pool(pool_kind)
    expected = (
        min(32, os.cpu_count() + 4) if pool_kind == "thread" else concur.ProcessPool()._max_workers
    )
    assert executor._max_workers == expected
    executor.shutdown()
