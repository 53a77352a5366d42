"""The crash table: how a worker dies × when it dies × start method.

Every row checks the same three things: the task the worker held (if any)
fails with WorkerCrashed naming the exit code or signal, the other tasks
complete, and the pool goes on working afterwards.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import concur

HOW = {
    "os._exit": (lambda: os._exit(13), 13, signal.SIGTERM),
    "SIGKILL": (lambda: os.kill(os.getpid(), signal.SIGKILL), -signal.SIGKILL, signal.SIGKILL),
    "SIGSEGV": (lambda: os.kill(os.getpid(), signal.SIGSEGV), -signal.SIGSEGV, signal.SIGSEGV),
}
WHEN = ["idle", "mid-task", "pickling the result", "unpickling the argument"]


def die(how: str) -> None:
    HOW[how][0]()


class DiesWhenPickled:
    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        die(self.how)
        raise AssertionError("unreachable")


class DiesWhenUnpickled:
    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        return (die, (self.how,))


def returns(value):
    return value


def make_dies_when_pickled(how):
    return DiesWhenPickled(how)  # built in the worker: pickling it there kills the worker


def mid_task(how):
    die(how)


def ok(x):
    time.sleep(0.01)
    return x * 2


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("how", list(HOW))
def test_crash_costs_only_the_task_it_held(how, when, start_method):
    _, exitcode, outside_signal = HOW[how]
    with concur.ProcessPool(2, mp_context=start_method) as pool:
        assert pool.submit(ok, 0).result(timeout=30) == 0
        if when == "idle":
            victim = pool.workers()[0].pid
            os.kill(victim, outside_signal)
            deadline = time.monotonic() + 10
            while victim in {w.pid for w in pool.workers()} and time.monotonic() < deadline:
                time.sleep(0.01)
            assert victim not in {w.pid for w in pool.workers()}  # reaped and forgotten
            doomed = None
        elif when == "mid-task":
            doomed = pool.submit(mid_task, how)
        elif when == "pickling the result":
            doomed = pool.submit(make_dies_when_pickled, how)
        else:
            doomed = pool.submit(returns, DiesWhenUnpickled(how))
        others = [pool.submit(ok, i) for i in range(1, 9)]
        if doomed is not None:
            with pytest.raises(concur.WorkerCrashed) as info:
                doomed.result(timeout=30)
            assert info.value.exitcode == exitcode
            if exitcode < 0:
                assert info.value.signal_name == signal.Signals(-exitcode).name
        assert [f.result(timeout=30) for f in others] == [2 * i for i in range(1, 9)]
        assert list(pool.map(ok, range(4))) == [0, 2, 4, 6]


def test_hints_name_the_likely_cause():
    assert "out of memory" in str(concur.WorkerCrashed(1, -signal.SIGKILL))
    assert "native code" in str(concur.WorkerCrashed(1, -signal.SIGSEGV))
    assert "os._exit" in str(concur.WorkerCrashed(1, 3))


def test_map_raises_at_the_crashed_item_after_the_ones_before():
    with concur.ProcessPool(2) as pool:
        results = pool.map(_crash_on_five, range(10), chunksize=1)
        got = []
        with pytest.raises(concur.WorkerCrashed):
            for value in results:
                got.append(value)
        assert got == [0, 1, 2, 3, 4]
        assert pool.submit(abs, -1).result(timeout=30) == 1


def _crash_on_five(x):
    if x == 5:
        os._exit(5)
    return x


def test_imap_return_exceptions_yields_the_crash_in_place():
    with concur.ProcessPool(2) as pool:
        got = list(pool.imap(_crash_on_five, range(8), chunksize=1, return_exceptions=True))
    assert got[:5] == [0, 1, 2, 3, 4] and got[6:] == [6, 7]
    assert isinstance(got[5], concur.WorkerCrashed)


def _crash_first_time(marker):
    # The first attempt dies; a retry on a fresh worker finds the marker.
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return "second try"


def test_retries_rerun_a_crashed_task_on_a_fresh_worker(tmp_path):
    marker = str(tmp_path / "tried")
    with concur.ProcessPool(1, retries=1) as pool:
        assert pool.submit(_crash_first_time, marker).result(timeout=30) == "second try"
    os.remove(marker)
    with concur.ProcessPool(1) as pool:
        with pytest.raises(concur.WorkerCrashed):
            pool.submit(_crash_first_time, marker).result(timeout=30)
        os.remove(marker)
        view = pool.options(retries=2)
        assert view.submit(_crash_first_time, marker).result(timeout=30) == "second try"


def test_retries_give_up_after_n_attempts():
    with concur.ProcessPool(1, retries=2) as pool:
        with pytest.raises(concur.WorkerCrashed):
            pool.submit(os._exit, 4).result(timeout=30)
        assert pool.submit(abs, -2).result(timeout=30) == 2
