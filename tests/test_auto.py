"""Auto on real work: decisions judged by their outcome (the rules alone: test_auto_rules.py)."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import concur
from concur.auto import AutoMap
from concur.auto.rules import choose

# -- decisions on real work (the rules alone: test_auto_rules.py) -------------


def test_sleeps_keep_threads_to_the_last_item():
    for _ in range(20):
        stream = AutoMap(nap, ([0.01] * 30,))
        assert stream.to_list() == [0.01] * 30
        assert [d.backend for d in stream.decisions] == ["thread"]


def nap(seconds):
    time.sleep(seconds)
    return seconds


def spin(n):
    count = 0
    while count < n:
        count += 1
    return n


def square(x):
    return x * x


def test_sleeps_go_to_threads_and_overlap():
    started = time.monotonic()
    results = concur.map(nap, [0.2] * 40)
    took = time.monotonic() - started
    assert results == [0.2] * 40
    assert results.decision.backend == "thread"
    assert results.decision.workers >= 39
    assert took < 0.2 * 40 / 4  # far better than a default-sized thread pool


def test_a_busy_loop_goes_to_processes():
    results = concur.map(spin, [1_500_000] * 12)  # about 0.5 s of computing
    assert results == [1_500_000] * 12
    assert results.decision.backend == "process", results.decision
    assert results.decision.workers == concur.processes.cpu_count()


BLOCK = b"x" * (32 << 20)


def digest(_):
    return hashlib.sha256(BLOCK).hexdigest()  # C code that releases the GIL


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to run in parallel")
def test_computing_that_releases_the_gil_runs_in_parallel():
    # Threads when the 2 ms GIL test is conclusive; on a host that starves
    # one of the two threads during it, auto cannot tell and uses processes,
    # which are parallel too. Never inline: that would waste the second core.
    results = concur.map(digest, range(16))
    assert results == [hashlib.sha256(BLOCK).hexdigest()] * 16
    assert results.decision.backend in ("thread", "process")


def digest_of_megabytes(mb):
    return hashlib.sha256(memoryview(BLOCK)[: mb << 20]).hexdigest()  # no copy: all in C


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to run in parallel")
@pytest.mark.parametrize("mb", [1, 4])
def test_short_calls_that_release_the_gil_get_threads(mb):
    # About 1 ms (timed inline by the probe) and 4 ms (watched on the probe
    # thread, ending before the spin test can tell) per call: too short for
    # one look to see the GIL released, and long enough in all (64 calls)
    # that threads halve the time while processes would pay their start-up.
    stream = concur.imap(digest_of_megabytes, [mb] * 64)
    assert list(stream) == [digest_of_megabytes(mb)] * 64
    first = stream.decisions[0]
    assert first.backend == "thread", str(first)
    assert "process" not in {d.backend for d in stream.decisions}, stream.decisions


def _hash_for(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        hashlib.sha256(memoryview(BLOCK)[: 1 << 20]).digest()  # the GIL released


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to run in parallel")
def test_threads_that_release_the_gil_are_judged_by_their_own_cpu_rate():
    # The probe's time on one core must not count against the threads that
    # follow it: averaged together, they would look like turns for the GIL.
    import threading

    from concur.auto.judge import Judge

    judge = Judge(None, None, None)
    judge.released = True  # what the probe's parallel test found
    _hash_for(0.4)  # the probe, on one core
    judge.adopt(choose(judge.measure(0.0025, 0.0025, 1), 1000))
    assert judge.decision.backend == "thread"
    wall0, cpu0 = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=_hash_for, args=(0.15,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rate = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    judge.observe(1, 0.0025, 0.0025, "thread", 1000, True, False)
    # Two cores free (the host may take one): the threads' own rate decides.
    assert judge.released == (rate > 1.3), (rate, judge.utilization)


@pytest.mark.parametrize("n", [30_000, 120_000])
def test_short_calls_that_hold_the_gil_do_not_get_threads(n):
    # The same sizes in pure Python: threads would only take turns.
    results = concur.map(spin, [n] * 64)
    assert results == [n] * 64
    assert results.decision.backend in ("inline", "process"), str(results.decision)
    assert not results.decision.measurements.released


def test_a_trivial_function_runs_inline():
    results = concur.map(square, range(20_000))
    assert results == [x * x for x in range(20_000)]
    assert results.decision.backend == "inline"


def changes_half_way(x):
    # The last 60 items take ~10 ms each: clearly worth two processes on any
    # host fast enough to run the first 3,000 inline.
    return x if x < 3000 else spin(1_000_000)


def test_work_that_changes_half_way_is_re_decided():
    stream = concur.imap(changes_half_way, range(3060))
    assert list(stream) == [x if x < 3000 else 1_000_000 for x in range(3060)]
    backends = [d.backend for d in stream.decisions]
    assert backends[0] == "inline"
    assert "process" in backends[1:]


_LOGS: dict[str, int] = {}  # path → a descriptor open for appends, per process


def _record(path, x):
    # One short write per call to a descriptor kept open: atomic, and cheap
    # enough that the first 3,000 calls stay inline work.
    fd = _LOGS.get(path)
    if fd is None:
        fd = _LOGS[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\n" % x)
    return changes_half_way(x)


def test_no_item_is_lost_or_run_twice_when_the_backend_changes(tmp_path):
    log = str(tmp_path / "calls")
    try:
        stream = concur.imap(_record, [log] * 3060, range(3060))
        assert list(stream) == [x if x < 3000 else 1_000_000 for x in range(3060)]
    finally:
        if log in _LOGS:
            os.close(_LOGS.pop(log))
    assert len({d.backend for d in stream.decisions}) > 1, stream.decisions
    calls = sorted(int(line) for line in Path(log).read_text().split())
    assert calls == list(range(3060))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=-(10**9), max_value=10**9), max_size=500))
def test_auto_map_equals_builtin_map(items):
    assert concur.map(square, items) == [x * x for x in items]


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=30))
def test_auto_imap_unordered_yields_each_result_once(items):
    got = list(concur.imap(nap, [x / 1000 for x in items], ordered=False))
    assert sorted(got) == sorted(x / 1000 for x in items)


def fails_on_seven(x):
    if x == 7:
        raise ValueError("seven")
    return x


def test_errors_behave_as_on_the_chosen_pool():
    with pytest.raises(ValueError, match="seven"):
        concur.map(fails_on_seven, range(20))
    got = list(concur.imap(fails_on_seven, range(10), return_exceptions=True))
    assert isinstance(got[7], ValueError)
    assert got[:7] == list(range(7))
    assert got[8:] == [8, 9]


def test_environment_overrides_the_choice(monkeypatch):
    monkeypatch.setenv("CONCUR_BACKEND", "thread")
    results = concur.map(square, range(100))
    assert results == [x * x for x in range(100)]
    assert results.decision.backend == "thread"
    assert results.decision.source == "CONCUR_BACKEND"
    monkeypatch.setenv("CONCUR_BACKEND", "gpu")
    with pytest.raises(ValueError, match="CONCUR_BACKEND"):
        concur.map(square, [1])


def test_the_decision_is_logged_at_info(caplog):
    with caplog.at_level(logging.INFO, logger="concur.auto"):
        concur.map(square, range(1000))
    assert any("concur auto: inline" in record.getMessage() for record in caplog.records)


def test_advise_returns_the_decision_for_a_sample():
    decision = concur.advise(nap, [0.05] * 10)
    assert decision.backend == "thread"
    # For a long run of such items: far more threads than the 10 sampled
    # (the count follows the measured wait/compute ratio, up to 256).
    assert decision.workers > 100, decision
    assert str(decision).startswith(f"{decision.workers} threads")
    assert "estimated for 1,000,000 items" in decision.reason
    assert decision.measurements.wait_fraction > 0.9
    assert decision.warnings == ()


def test_advise_estimates_the_run_it_decides_for():
    few = concur.advise(nap, [0.02] * 6, items=6)
    assert few.workers <= 6  # never more threads than the run's items
    # The estimates are for those 6 items: inline is about 6 × 20 ms.
    inline_ms = float(few.reason.split("inline ")[1].split(" ms")[0])
    assert 100 <= inline_ms <= 400, few.reason
    with pytest.raises(ValueError, match="items must be an int >= 1"):
        concur.advise(nap, [0.01], items=0)


def half_fail(x):
    if x % 2:
        raise KeyError(x)
    return x


def test_advise_reports_a_sample_that_raised():
    decision = concur.advise(half_fail, range(10))
    assert decision.warnings == (
        "5 of 10 sampled items raised (first: KeyError: 1); their time may not be a working call's",
    )
    assert "warning: 5 of 10 sampled items raised" in str(decision)


def test_explicit_backends_still_say_what_they_did():
    results = concur.map(square, range(50), backend="process", workers=2)
    assert results == [x * x for x in range(50)]
    assert (results.decision.backend, results.decision.workers) == ("process", 2)
    assert results.decision.source == "backend="


def test_auto_map_timeout():
    with pytest.raises(TimeoutError):
        concur.map(nap, [0.5] * 4, timeout=0.2)


def test_run_auto_is_inline_without_timeout_and_a_process_with_one():
    assert concur.run(os.getpid) == os.getpid()
    assert concur.run(os.getpid, timeout=30) != os.getpid()


def test_auto_pool_decides_per_function():
    with concur.AutoPool() as pool:
        for _ in range(2):
            assert [
                f.result(timeout=30) for f in [pool.submit(spin, 200_000) for _ in range(4)]
            ] == [200_000] * 4
            assert [f.result(timeout=30) for f in [pool.submit(nap, 0.01) for _ in range(4)]] == [
                0.01
            ] * 4
        decisions = pool.decisions
        assert decisions["test_auto.spin"].backend == "process"
        assert decisions["test_auto.nap"].backend == "thread"
        assert list(pool.map(square, range(10))) == [x * x for x in range(10)]
        assert pool.decision is not None


def test_auto_pool_keeps_computing_work_on_processes_on_a_busy_machine():
    # Three programs computing beside it on two cores: a learning call's CPU
    # clock runs at about half the wall clock, which is the host's queue
    # (and the GIL), not a wait.
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        with concur.AutoPool() as pool:
            for _ in range(2):
                # Calls longer than the GIL's switch interval: they hand it over.
                futures = [pool.submit(spin, 2_000_000) for _ in range(4)]
                assert [f.result(timeout=60) for f in futures] == [2_000_000] * 4
            decision = pool.decisions["test_auto.spin"]
            assert decision.backend == "process", decision.reason
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def spin_pid(n):
    spin(n)
    return os.getpid()


def test_auto_pool_map_keeps_to_max_workers():
    # Computing work goes to processes; an AutoPool of one worker uses one.
    with concur.AutoPool(max_workers=1) as pool:
        results = pool.map(spin_pid, [3_000_000] * 16)  # about 1 s of computing
        pids = set(results)
        assert results.decision.workers == 1
    assert len(pids - {os.getpid()}) <= 1


def test_auto_pool_map_and_imap_keep_to_a_given_chunksize(monkeypatch):
    monkeypatch.setenv("CONCUR_BACKEND", "process")
    with concur.AutoPool(max_workers=2) as pool:
        mapped = pool.map(square, range(40), chunksize=7)
        assert list(mapped) == [x * x for x in range(40)]
        assert mapped.decision.chunksize == 7
        assert mapped.decision.workers == 2
        streamed = pool.imap(square, range(40), chunksize=3, ordered=False)
        assert sorted(streamed) == [x * x for x in range(40)]
        assert streamed.decision.chunksize == 3
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(square, range(4), chunksize=0)


def test_stopping_early_stops_the_workers():
    stream = concur.imap(nap, [0.05] * 1000)
    assert next(stream) == 0.05
    stream.close()  # the fixture checks that no thread or process is left


def test_automap_is_lazy_on_endless_input():
    import itertools

    stream = AutoMap(square, (itertools.count(),))
    assert list(itertools.islice(stream, 5)) == [0, 1, 4, 9, 16]
    stream.close()


# -- another thread of the program computes -------------------------------------


@pytest.fixture
def busy_thread():
    """A thread of the program that computes in Python the whole time."""
    import threading

    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=spin, name="busy-monitor")
    thread.start()
    yield
    stop.set()
    thread.join(10)


def nap_10ms(x):
    time.sleep(0.01)
    return x


def test_tiny_items_beside_a_busy_thread_run_inline(busy_thread):
    # A probe that waits for the GIL (held by the busy thread) is not
    # waiting for IO: no threads, no processes for x * x.
    stream = AutoMap(square, (range(5000),))
    assert sum(stream) == sum(x * x for x in range(5000))
    backends = [d.backend for d in stream.decisions]
    assert set(backends) == {"inline"}, stream.decisions


SLOW = {"from": 10**9}  # items from this one on sleep 20 ms


def square_where(x):
    """x squared and the thread that computed it (a sleep from SLOW on)."""
    import threading

    if x >= SLOW["from"]:
        time.sleep(0.02)
    return x * x, threading.current_thread().name


def test_a_function_tiny_last_time_runs_all_here_next_time(busy_thread):
    # Handing item 0 to a probe thread costs a GIL switch each way beside a
    # computing thread: the next run of a tiny function starts inline.
    import threading

    concur.map(square_where, range(5000))
    results = concur.map(square_where, range(5000))
    assert [value for value, _ in results] == [x * x for x in range(5000)]
    assert {name for _, name in results} == {threading.current_thread().name}
    assert results.decision.backend == "inline"


def test_a_function_tiny_last_time_that_now_waits_still_gets_threads(monkeypatch):
    import threading

    concur.map(square_where, range(5000))
    monkeypatch.setitem(SLOW, "from", 0)  # every item now sleeps
    results = concur.map(square_where, range(40))
    assert [value for value, _ in results] == [x * x for x in range(40)]
    assert results.decision.backend == "thread", str(results.decision)
    # only the item timed in its place held the caller
    assert [name for _, name in results].count(threading.current_thread().name) == 1


def test_sleeping_items_beside_a_busy_thread_still_get_threads(busy_thread):
    stream = AutoMap(nap_10ms, (range(60),))
    assert list(stream) == list(range(60))
    assert stream.decisions[0].backend == "thread", stream.decisions[0]


@pytest.fixture
def loaded_host():
    """Other programs computing on every core (real processes, as on a
    shared machine): concur's threads and workers queue for a CPU."""
    import subprocess
    import sys

    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(2 * len(os.sched_getaffinity(0)))
    ]
    try:
        time.sleep(0.2)
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(10)


def test_computing_on_a_loaded_host_is_not_taken_for_waiting(loaded_host):
    # Queued behind other programs, a worker's wall time grows past its CPU
    # time; without a blocking call in it, that is the host's, not waiting.
    stream = AutoMap(spin, ([1_500_000] * 12,))
    assert stream.to_list() == [1_500_000] * 12
    assert [d.backend for d in stream.decisions] == ["process"], stream.decisions


def test_a_bad_concur_backend_lists_every_backend(monkeypatch):
    monkeypatch.setenv("CONCUR_BACKEND", "gpu")
    with pytest.raises(ValueError, match="CONCUR_BACKEND") as info:
        concur.map(square, [1])
    for name in ("auto", "inline", "thread", "process", "dask"):
        assert name in str(info.value)


def test_concur_backend_dask_is_refused_by_a_local_auto_pool(monkeypatch):
    monkeypatch.setenv("CONCUR_BACKEND", "dask")
    with pytest.raises(ValueError, match="DaskPool"):
        concur.AutoPool()


class _Concurrency:
    """How many calls run at once, at most, and the slowest call."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.now = self.most = 0
        self.slowest = 0.0

    def get(self, url):
        from concur.bench.workloads import http_get

        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        started = time.perf_counter()
        try:
            return http_get(url)
        finally:
            with self.lock:
                self.now -= 1
                self.slowest = max(self.slowest, time.perf_counter() - started)


def test_a_server_that_serves_few_at_a_time_gets_no_more_than_it_holds():
    # 5 served at a time, 20 ms each, a backlog of 5: past 11 connections
    # at once, SYNs are dropped and retried after a second. Threads sized
    # by the wait ratio alone opened ~100 and the run took over a second.
    from concur.bench import capacity

    calls = _Concurrency()
    with capacity.running() as url:
        results = concur.map(calls.get, [url] * 80)
    assert results == [2] * 80
    assert results.decision.backend == "thread"
    # At most one SYN retry (1 s): with threads by the wait ratio alone the
    # run timed out. (Under a full suite's load the ramp can still overshoot
    # to 12-16 once; a retry then costs one call a second.)
    assert calls.slowest < 2.5, (calls.slowest, calls.most)
    assert 4 <= calls.most <= 16, calls.most  # a ramp, not the ~100 the wait ratio asks


class _HoldsALock:
    def __init__(self):
        import threading

        self.lock = threading.Lock()  # cannot be pickled: nor can this object's methods

    def work(self, n):
        return spin(n)


def test_a_function_that_cannot_be_pickled_never_goes_to_processes():
    # Computing that processes would speed up, through a bound method of an
    # object holding a lock: the run used to fail with SerializationError
    # when auto picked processes.
    results = concur.map(_HoldsALock().work, [1_000_000] * 8)
    assert results == [1_000_000] * 8
    assert results.decision.backend != "process"
