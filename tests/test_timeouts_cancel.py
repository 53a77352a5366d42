"""Time limits that really stop the work, and cancel() on a running task."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import CancelledError

import psutil
import pytest

import concur


def sleeper(seconds):
    time.sleep(seconds)
    return seconds


def report_and_sleep(path, seconds):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)


def ignores_sigterm(seconds):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)


def spin_forever():
    while True:
        pass


def wait_until(predicate, limit=10.0):
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.mark.parametrize("target", [sleeper, ignores_sigterm, spin_forever])
def test_process_task_past_its_deadline_is_stopped_on_time(target):
    with concur.ProcessPool(1, task_timeout=0.3) as pool:
        pool.submit(abs, 1).result(timeout=30)  # a warm worker: the clock is the task's own
        args = () if target is spin_forever else (30,)
        future = pool.submit(target, *args)
        wait_until(future.running)
        started = time.monotonic()
        victim = pool.workers()[0].pid
        with pytest.raises(concur.TaskTimeout) as info:
            future.result(timeout=10)
        late = time.monotonic() - started - 0.3
        assert late < 0.5, f"failed {late:.3f} s after the deadline"
        assert isinstance(info.value, TimeoutError)
        assert info.value.pid == victim and info.value.timeout == 0.3
        wait_until(lambda: victim not in {w.pid for w in pool.workers()})
        assert pool.submit(abs, -3).result(timeout=30) == 3  # a fresh worker took the slot


def test_per_call_timeout_through_options():
    with concur.ProcessPool(2) as pool:
        quick = pool.options(timeout=5).submit(sleeper, 0.01)
        slow = pool.options(timeout=0.2).submit(sleeper, 30)
        unlimited = pool.submit(sleeper, 0.5)
        assert quick.result(timeout=30) == 0.01
        with pytest.raises(concur.TaskTimeout):
            slow.result(timeout=10)
        assert unlimited.result(timeout=30) == 0.5


def test_timeouts_in_map_and_imap_fail_only_the_late_items():
    with concur.ProcessPool(2, task_timeout=0.5) as pool:
        got = list(pool.imap(sleeper, [0.01, 30, 0.02], return_exceptions=True))
        assert got[0] == 0.01 and got[2] == 0.02
        assert isinstance(got[1], concur.TaskTimeout)
        results = pool.options(timeout=0.3).map(sleeper, [0.01, 30])
        assert next(results) == 0.01
        with pytest.raises(concur.TaskTimeout):
            next(results)


def test_bad_task_timeouts_are_refused():
    for bad in (-1, 0, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            concur.ProcessPool(1, task_timeout=bad)
    with pytest.raises(ValueError, match="retries"):
        concur.ProcessPool(1).options(retries=-1)


def test_cancel_a_running_process_task_kills_and_replaces_its_worker():
    with concur.ProcessPool(1) as pool:
        future = pool.submit(sleeper, 30)
        wait_until(future.running)
        victim = pool.workers()[0].pid
        assert future.cancel() is True
        assert future.cancelled() and future.done()
        with pytest.raises(CancelledError):
            future.result(timeout=1)
        wait_until(lambda: victim not in {w.pid for w in pool.workers()})
        assert pool.submit(os.getpid).result(timeout=30) != victim


def test_cancel_a_running_autopool_process_call_kills_its_worker(monkeypatch, tmp_path):
    monkeypatch.setenv("CONCUR_BACKEND", "process")  # every call goes to processes
    marker = tmp_path / "pid"
    with concur.AutoPool(1) as pool:
        future = pool.submit(report_and_sleep, str(marker), 30)
        wait_until(lambda: marker.exists() and marker.read_text())
        victim = int(marker.read_text())
        assert future.cancel() is True
        assert future.cancelled()
        wait_until(lambda: not psutil.pid_exists(victim), limit=5)
        assert pool.submit(os.getpid).result(timeout=30) != victim


def test_cancel_of_a_finished_task_is_refused():
    with concur.ProcessPool(1) as pool:
        future = pool.submit(abs, -1)
        assert future.result(timeout=30) == 1
        assert future.cancel() is False


def test_workers_report_what_they_run():
    with concur.ProcessPool(2) as pool:
        future = pool.submit(sleeper, 30)
        wait_until(lambda: any(w.state == "busy" for w in pool.workers()))  # started and ready
        time.sleep(0.05)
        busy = [w for w in pool.workers() if w.state == "busy"]
        assert len(busy) == 1
        info = busy[0]
        assert info.task.endswith("sleeper") and info.running_for >= 0.05
        assert info.rss and info.rss > 1_000_000 and info.pid != os.getpid()
        future.cancel()


def test_thread_task_fails_on_time_and_its_slot_stays_busy_until_it_returns():
    release = threading.Event()
    with concur.ThreadPool(1, task_timeout=0.2) as pool:
        stuck = pool.submit(release.wait, 30)
        started = time.monotonic()
        with pytest.raises(concur.TaskTimeout, match="abandoned"):
            stuck.result(timeout=10)
        assert time.monotonic() - started < 0.2 + 0.3
        [slot] = pool.workers()
        assert slot.state == "abandoned"
        queued = pool.submit(abs, -4)  # no other thread is started in its place
        time.sleep(0.1)
        assert not queued.done()
        release.set()
        assert queued.result(timeout=10) == 4
        wait_until(lambda: pool.workers()[0].state == "idle")  # it settles, then tidies up
        assert len(pool.workers()) == 1


def test_a_timed_out_thread_tasks_callback_may_shut_the_pool_down():
    # The callback runs when the watcher fails the late task; it waits for
    # the other worker, whose timed task ends meanwhile and withdraws its
    # own limit from the same watcher: that must not wait for the callback.
    pool = concur.ThreadPool(2, task_timeout=0.3)
    release = threading.Event()
    shut = threading.Event()

    def on_timeout(_):
        release.set()
        pool.shutdown(wait=True)
        shut.set()

    late = pool.submit(time.sleep, 1.5)
    other = pool.submit(release.wait, 10)
    late.add_done_callback(on_timeout)
    assert other.result(timeout=10) is True
    assert shut.wait(10), "shutdown() in the callback did not return"
    with pytest.raises(concur.TaskTimeout):
        late.result(timeout=0)


def test_workers_carry_a_readable_name_in_ps():
    import psutil

    with concur.ProcessPool(1) as pool:
        pool.submit(abs, 1).result(timeout=30)
        pid = pool.workers()[0].pid
        process = psutil.Process(pid)
        assert process.name() == "concur-worker"
        # setproctitle (a dependency); the worker says it is idle just after replying
        wait_until(lambda: "[idle]" in " ".join(process.cmdline()))
        assert " ".join(process.cmdline()).startswith("concur-worker ProcessPool-")
    worker = concur.spawn(time.sleep, 2)
    wait_until(lambda: psutil.Process(worker.pid).name() == "concur-spawn")
    worker.kill()
    worker.join(10)
