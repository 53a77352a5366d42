"""pool.stats(): what each worker did, and the slowest tasks, on real processes and threads."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import concur
from concur._stats import HISTORY, Recorder, WorkerRecord

QUICK_S = 0.02
SLOW_S = 0.3


def quick_task(seconds):
    time.sleep(seconds)
    return seconds


def slow_task(seconds):
    time.sleep(seconds)
    return seconds


def noop(x):
    return x


def die(_):
    os.kill(os.getpid(), signal.SIGKILL)


def _check_consistent(stats: concur.PoolStats) -> None:
    for w in stats.workers:
        assert w.startup_s >= 0 and w.working_s >= 0 and w.idle_s >= 0, w
        # idle is what is left of alive: the three add up (idle is never negative)
        assert w.startup_s + w.working_s + w.idle_s == pytest.approx(w.alive_s, abs=0.05), w
    assert stats.tasks_done == sum(w.tasks_done for w in stats.workers)


def _run_known_work(pool) -> tuple[int, float]:
    """20 quick calls, 2 slow ones and a chunked map of 50: (tasks, seconds slept)."""
    futures = [pool.submit(quick_task, QUICK_S) for _ in range(20)]
    futures += [pool.submit(slow_task, SLOW_S) for _ in range(2)]
    assert [f.result(timeout=60) for f in futures] == [QUICK_S] * 20 + [SLOW_S] * 2
    assert list(pool.map(noop, range(50), chunksize=10)) == list(range(50))
    return 72, 20 * QUICK_S + 2 * SLOW_S


def _check_known_work(stats: concur.PoolStats, tasks: int, slept: float) -> None:
    assert sum(w.tasks_done for w in stats.workers) == tasks
    assert stats.tasks_done == tasks
    # a task's wall time is at least its sleep; the overhead around 22 sleeps is small
    assert slept * 0.95 <= stats.working_s <= slept * 3, stats
    assert [t.label.rsplit(".", 1)[-1] for t in stats.slowest[:2]] == ["slow_task"] * 2
    assert all(t.wall_s >= SLOW_S * 0.95 for t in stats.slowest[:2])
    assert all(t.wall_s < SLOW_S * 0.95 for t in stats.slowest[2:])
    assert len(stats.slowest) == 10
    assert [t.wall_s for t in stats.slowest] == sorted(
        (t.wall_s for t in stats.slowest), reverse=True
    )
    names = {w.name for w in stats.workers}
    assert {t.worker for t in stats.slowest} <= names
    _check_consistent(stats)


def test_process_pool_stats_count_every_task_and_the_time_it_took():
    with concur.ProcessPool(2) as pool:
        tasks, slept = _run_known_work(pool)
        stats = pool.stats()
        pids = {w.pid for w in pool.workers()}
    assert stats.kind == "process"
    assert stats.workers_started == 2
    assert {w.pid for w in stats.workers} == pids
    assert all(w.exit is None and w.exitcode is None for w in stats.workers)
    assert all(0 < w.startup_s < 30 for w in stats.workers)
    assert {t.pid for t in stats.slowest} <= pids
    _check_known_work(stats, tasks, slept)


def test_after_shutdown_every_process_worker_is_listed_with_its_exit():
    pool = concur.ProcessPool(2)
    try:
        assert list(pool.map(quick_task, [QUICK_S] * 4, chunksize=1)) == [QUICK_S] * 4
    finally:
        pool.shutdown()
    stats = pool.stats()
    assert len(stats.workers) == 2
    assert all(w.exit == "shut down: exited with code 0" for w in stats.workers), stats
    assert all(w.exitcode == 0 for w in stats.workers)
    assert stats.tasks_done == 4
    _check_consistent(stats)


def test_a_crashed_worker_stays_in_the_stats_with_how_it_ended():
    with concur.ProcessPool(1) as pool:
        assert pool.submit(noop, 1).result(timeout=30) == 1
        with pytest.raises(concur.WorkerCrashed) as crash:
            pool.submit(die, None).result(timeout=30)
        assert pool.submit(slow_task, 0.1).result(timeout=30) == 0.1
        stats = pool.stats()
    assert stats.workers_started == 2
    live, dead = stats.workers  # live workers first
    assert live.exit is None and live.tasks_done == 1
    assert dead.pid == crash.value.pid
    assert dead.exit == "crashed: was killed by SIGKILL"
    assert dead.exitcode == -signal.SIGKILL
    assert dead.tasks_done == 1  # the task it died in is not done
    assert stats.tasks_done == 2
    assert stats.slowest[0].pid == live.pid
    _check_consistent(stats)


def test_retired_workers_are_listed_as_retired():
    with concur.ProcessPool(1, max_tasks_per_child=2) as pool:
        assert [pool.submit(noop, i).result(timeout=30) for i in range(5)] == list(range(5))
        deadline = time.monotonic() + 10
        while (
            sum(w.exit is not None for w in pool.stats().workers) < 2
        ):  # exits are reaped soon after
            assert time.monotonic() < deadline, pool.stats()
            time.sleep(0.01)
        stats = pool.stats()
    assert stats.workers_started == 3
    assert [w.exit for w in stats.workers] == [None] + ["retired: exited with code 0"] * 2
    assert [w.tasks_done for w in stats.workers] == [1, 2, 2]  # live (one task) first
    _check_consistent(stats)


def test_thread_pool_stats_count_every_task_and_the_time_it_took():
    with concur.ThreadPool(3) as pool:
        tasks, slept = _run_known_work(pool)
        stats = pool.stats()
    assert stats.kind == "thread"
    assert 1 <= stats.workers_started <= 3
    assert all(w.pid == os.getpid() and w.ident is not None for w in stats.workers)
    assert all(w.startup_s < 1.0 for w in stats.workers)  # a thread is ready at once
    _check_known_work(stats, tasks, slept)
    after = pool.stats()
    assert all(w.exit == "shut down" for w in after.workers), after


def test_a_task_running_now_counts_as_working():
    started = threading.Event()

    def busy():
        started.set()
        time.sleep(0.5)

    with concur.ThreadPool(1) as pool:
        future = pool.submit(busy)
        assert started.wait(10)
        time.sleep(0.2)
        (worker,) = pool.stats().workers
        future.result(timeout=10)
    assert worker.busy
    assert worker.working_s >= 0.15
    assert worker.tasks_done == 0


def test_auto_pool_stats_include_its_thread_pools():
    with concur.AutoPool(2) as pool:
        assert [pool.submit(slow_task, 0.05).result(timeout=30) for _ in range(3)] == [0.05] * 3
        stats = pool.stats()
    assert stats.kind == "auto"
    assert stats.tasks_done >= 3  # its first calls run on threads
    assert stats.slowest[0].label.endswith("slow_task")


def test_stats_print_as_a_table_a_person_can_read():
    with concur.ProcessPool(1) as pool:
        pool.submit(slow_task, 0.05).result(timeout=30)
        text = str(pool.stats())
    lines = text.splitlines()
    assert lines[0].startswith("process pool: 1 worker(s) started, 1 task(s) done")
    assert "ProcessPool-" in lines[2] and "worker-0" in lines[2]
    assert "slowest tasks:" in lines
    assert (
        lines[-1]
        .strip()
        .endswith(f"(on {pool.stats().workers[0].name}, pid {lines[2].split()[1]})")
    )
    assert "slow_task" in lines[-1]


def test_the_history_of_exited_workers_is_bounded_and_the_totals_keep_them():
    recorder = Recorder("process")
    for n in range(HISTORY + 6):
        record = WorkerRecord(f"w{n}", n, n, time.monotonic())
        recorder.started(record)
        recorder.ready(record)
        recorder.done(record, type("T", (), {"label": f"t{n}"})(), 1, float(n), 0.0)
        recorder.ended(record, "crashed: was killed by SIGKILL", -9)
    stats = recorder.snapshot()
    assert len(stats.workers) == HISTORY
    assert stats.workers[0].name == "w6"  # the oldest ones are dropped
    assert stats.workers_started == HISTORY + 6
    assert stats.tasks_done == HISTORY + 6
    assert [t.label for t in stats.slowest[:3]] == [
        f"t{HISTORY + 5}",
        f"t{HISTORY + 4}",
        f"t{HISTORY + 3}",
    ]
    assert len(stats.slowest) == 10
