"""Warm pools: concur.map reuses idle workers across calls, for a bounded time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import concur
from concur.auto import release_warm
from conftest import wait_gone

SCRIPTS = Path(__file__).parent / "scripts"


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def fail_on(x):
    if x == 3:
        raise ValueError("item 3")
    return os.getpid()


def worker_pids():
    """This process's pool workers: the fork server's children."""
    me = os.getpid()
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.ppid() != me and child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def test_a_second_call_runs_on_the_first_calls_workers():
    first = set(concur.map(pid_after, [0.01] * 8, backend="process"))
    second = set(concur.map(pid_after, [0.01] * 8, backend="process"))
    assert first and first == second
    assert os.getpid() not in first


def test_idle_workers_stop_after_the_keep_warm_time(monkeypatch):
    monkeypatch.setenv("CONCUR_KEEP_WARM", "0.5")
    pids = set(concur.map(pid_after, [0.01] * 4, backend="process"))
    assert pids <= {p.pid for p in psutil.Process().children(recursive=True)}
    wait_gone(list(pids), 10)  # raises if a warm worker outlives CONCUR_KEEP_WARM


def test_keep_warm_zero_stops_workers_at_the_end_of_each_call(monkeypatch):
    monkeypatch.setenv("CONCUR_KEEP_WARM", "0")
    pids = set(concur.map(pid_after, [0.01] * 4, backend="process"))
    alive = {p.pid for p in psutil.Process().children(recursive=True)}
    assert not pids & alive
    assert not set(concur.map(pid_after, [0.01] * 4, backend="process")) & pids


def test_a_bad_keep_warm_value_says_what_to_write(monkeypatch):
    monkeypatch.setenv("CONCUR_KEEP_WARM", "ten")
    with pytest.raises(ValueError, match=r"CONCUR_KEEP_WARM='ten'.*seconds"):
        concur.map(pid_after, [0.001] * 4, backend="process")


def test_a_failed_run_hands_no_worker_to_the_next():
    with pytest.raises(ValueError, match="item 3"):
        concur.map(fail_on, range(40), backend="process")
    # Its workers may still have run its chunks: they are stopped, not kept,
    # even when the failed chunk was the last in flight.
    assert worker_pids() == set()


def test_release_warm_stops_them_now():
    pids = set(concur.map(pid_after, [0.01] * 4, backend="process"))
    release_warm()
    assert not pids & {p.pid for p in psutil.Process().children(recursive=True)}


def test_threads_are_reused_too():
    import threading

    def warm_threads():
        return {t for t in threading.enumerate() if t.name.startswith("concur-auto-thread")}

    concur.map(pid_after, [0.01] * 8, backend="thread")
    first = warm_threads()
    concur.map(pid_after, [0.01] * 8, backend="thread")
    # The same thread objects serve again; the pool starts threads as work
    # finds none idle, so the second run may add one where the first had
    # one finishing.
    assert first and first <= warm_threads()


def square(x):
    return x * x


def test_a_warm_run_starts_no_thread(monkeypatch):
    # Each thread started is a wait for it to run: beside a thread of the
    # program that computes, a GIL hand-off of up to 5 ms. A warm inline
    # run times its chunks on the pool's own thread, and parking its pool
    # again wakes no timer.
    import threading

    concur.map(square, range(5000))  # leaves a thread pool and the keeper
    started = []
    real_start = threading.Thread.start

    def counting_start(thread):
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for _ in range(20):
        results = concur.map(square, range(5000))
        assert results == [x * x for x in range(5000)]
        assert results.decision.backend == "inline"
    # The pool starts a thread only when all of its own are busy: a run may
    # find one still ending the last run's watch, most often on a loaded
    # host, until the pool has as many as that takes. Never one per run (a
    # thread of its own per watch, and a timer per park, started 40 here).
    assert len(started) <= 6, started
    assert all(name.startswith("concur-auto-thread") for name in started), started
    assert [t.name for t in threading.enumerate()].count("concur-warm-keeper") == 1


def test_a_shorter_keep_warm_time_is_kept_to(monkeypatch):
    # The keeper waits for the first parked pool's time; one parked later
    # with a shorter time must wake it.
    monkeypatch.setenv("CONCUR_KEEP_WARM", "30")
    concur.map(pid_after, [0.01] * 4, backend="thread")
    monkeypatch.setenv("CONCUR_KEEP_WARM", "0.3")
    pids = set(concur.map(pid_after, [0.01] * 4, backend="process"))
    wait_gone(list(pids), 10)  # raises if the process pool outlives its 0.3 s


def test_pools_kept_for_ever_stay_until_released(monkeypatch):
    # CONCUR_KEEP_WARM=inf: the keeper must wait on, not die of the timeout,
    # and a pool parked later must still be kept and stopped on release.
    import threading

    monkeypatch.setenv("CONCUR_KEEP_WARM", "inf")
    concur.map(pid_after, [0.01] * 4, backend="thread")
    pids = set(concur.map(pid_after, [0.01] * 4, backend="process"))
    time.sleep(0.2)
    keepers = [t for t in threading.enumerate() if t.name == "concur-warm-keeper"]
    assert len(keepers) == 1 and keepers[0].is_alive()
    assert pids <= {p.pid for p in psutil.Process().children(recursive=True)}
    release_warm()
    wait_gone(list(pids), 10)  # raises if one outlives its release


def test_an_auto_pool_counts_only_its_callers_work():
    # Auto's watchdog over inline chunks is none of the caller's tasks: an
    # AutoPool's stats and threads show the items it ran, nothing else.
    with concur.AutoPool() as pool:
        assert list(pool.map(square, range(20_000))) == [x * x for x in range(20_000)]
        time.sleep(0.2)  # what the run left to end has ended
        stats = pool.stats()
    assert stats.tasks_done <= 1, stats  # the probe's item 0, if it went to a thread
    assert not [task for task in stats.slowest if "Watchdog" in task.label], stats


def test_auto_pool_map_runs_on_the_pools_own_workers():
    with concur.AutoPool(max_workers=1) as pool:
        first = set(pool.map(pid_after, [0.01] * 6))
        second = set(pool.map(pid_after, [0.01] * 6))
    assert first == second


@pytest.mark.parametrize("keep_warm", ["10", "0"], ids=["warm", "not-kept"])
def test_a_forked_child_starts_its_own_workers(keep_warm):
    # Not kept, the parent's pool is gone but its fork server still runs:
    # the child must start a server of its own, not use the parent's.
    run = subprocess.run(
        [sys.executable, str(SCRIPTS / "warm_fork.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CONCUR_KEEP_WARM": keep_warm},
    )
    assert run.returncode == 0, run.stderr
    parent, child = (set(map(int, line.split())) for line in run.stdout.splitlines()[-2:])
    assert parent and child and not parent & child


# -- nested calls: a worker's share of the CPUs ---------------------------------


def spin(n):
    count = 0
    while count < n:
        count += 1
    return n


def nested(kind):
    """Inside a worker: what an inner call decides, and the processes it left."""
    from concur._proc import cpu_count

    inner = concur.map(spin, [200_000] * 6, backend=kind)
    with concur.ProcessPool() as pool:
        default_workers = pool._max_workers
    return inner.decision.backend, inner.decision.workers, cpu_count(), default_workers


def test_code_inside_a_worker_gets_its_share_of_the_cpus():
    cores = len(os.sched_getaffinity(0))
    outer = concur.map(nested, ["auto", "process"], backend="process", workers=cores)
    (auto_backend, _, budget, default_workers), (_, process_workers, _, _) = outer
    assert budget == 1 == default_workers  # cores // workers of the outer pool
    assert auto_backend != "process"  # one CPU: nothing to gain from processes
    assert process_workers == 1  # backend="process" asked: one worker, not a machine's worth


def test_what_a_pool_computes_for_a_call_counts_as_the_calls_cpu():
    # A task whose own map runs on processes computes, though its thread
    # only waits: auto must not take it for waiting on the outside world.
    from concur import _cputime

    items = [1_000_000] * 8
    start = _cputime.clock()
    spin(items[0])
    one = _cputime.spent(start)[1]
    with concur.ProcessPool(2) as pool:
        pool.submit(spin, 1).result()  # started: only the map is timed
        start = _cputime.clock()
        assert list(pool.map(spin, items)) == items
        _, cpu = _cputime.spent(start)
    assert cpu > 0.6 * len(items) * one, (cpu, one)


def outer_task(n):
    """A task that itself maps computing work with no hints."""
    return sum(concur.map(spin, [n] * 8))


def test_tasks_that_run_their_own_computing_map_are_not_taken_for_waiting():
    # 8 tasks, each 8 × ~10 ms computing in its own concur.map: threads for
    # the outer map would have each inner map start processes of its own.
    # Run after run, the inner maps find warm pools, and wait less to start.
    n = 400_000
    for _ in range(3):
        results = concur.map(outer_task, [n] * 8)
        assert results == [8 * n] * 8
        assert results.decision.backend != "thread", str(results.decision)


def nap(seconds):
    time.sleep(seconds)
    return seconds


def outer_waits(_):
    """A task whose own map waits (threads inside), computing nothing."""
    return sum(concur.map(nap, [0.02] * 4))


def test_tasks_whose_own_map_waits_still_get_threads():
    # What the inner chunks computed decides, not that they ran elsewhere.
    results = concur.map(outer_waits, range(16))
    assert results == [0.08] * 16
    assert results.decision.backend == "thread", str(results.decision)


def test_a_budget_set_by_the_user_bounds_every_default(monkeypatch):
    from concur._proc import cpu_count

    monkeypatch.setenv("CONCUR_CPU_BUDGET", "1")
    cpu_count.cache_clear()
    try:
        decision = concur.map(spin, [200_000] * 20).decision
        assert decision.backend != "process" and cpu_count() == 1
        monkeypatch.setenv("CONCUR_CPU_BUDGET", "lots")
        cpu_count.cache_clear()
        with pytest.raises(ValueError, match="CONCUR_CPU_BUDGET='lots'"):
            cpu_count()
    finally:
        monkeypatch.delenv("CONCUR_CPU_BUDGET")
        cpu_count.cache_clear()
