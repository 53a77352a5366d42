"""The short GIL switch interval concur holds while its own threads must act."""

from __future__ import annotations

import sys
import threading
import time

import pytest

import concur
from concur import _gil


@pytest.fixture(autouse=True)
def default_interval():
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def test_holds_nest_and_the_last_release_restores_the_interval():
    first, second = _gil.Hold(), _gil.Hold()
    assert sys.getswitchinterval() == pytest.approx(_gil.FAST_SWITCH_S)
    first.release()
    first.release()  # a second release of the same hold changes nothing
    assert sys.getswitchinterval() == pytest.approx(_gil.FAST_SWITCH_S)
    second.release()
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_value_the_program_set_meanwhile_is_kept():
    hold = _gil.Hold()
    sys.setswitchinterval(0.002)
    hold.release()
    assert sys.getswitchinterval() == pytest.approx(0.002)


def test_a_shorter_interval_than_concurs_is_left_alone():
    sys.setswitchinterval(0.0001)
    with _gil.responsive():
        assert sys.getswitchinterval() == pytest.approx(0.0001)
    assert sys.getswitchinterval() == pytest.approx(0.0001)


def _burn(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def _sample(stop: threading.Event, seen: set[float]) -> None:
    while not stop.is_set():
        seen.add(round(sys.getswitchinterval(), 6))
        time.sleep(0.0002)


def test_a_pool_starting_beside_a_busy_thread_shortens_the_interval_then_restores_it():
    stop = threading.Event()
    seen: set[float] = set()
    helpers = [
        threading.Thread(target=_burn, args=(stop,)),
        threading.Thread(target=_sample, args=(stop, seen)),
    ]
    for thread in helpers:
        thread.start()
    try:
        with concur.ProcessPool(2) as pool:
            assert list(pool.map(abs, [-1, -2, -3, -4])) == [1, 2, 3, 4]
    finally:
        stop.set()
        for thread in helpers:
            thread.join(timeout=10)
    assert _gil.FAST_SWITCH_S in seen  # while the workers started
    assert sys.getswitchinterval() == pytest.approx(0.005)


def spin(n):
    count = 0
    while count < n:
        count += 1
    return n


def test_auto_probing_computing_work_restores_the_interval():
    results = concur.map(spin, [1_000_000] * 16)
    assert results == [1_000_000] * 16
    assert results.decision.backend != "inline"  # the probe computed long enough to matter
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_long_first_task_does_not_keep_the_interval_short():
    with concur.ProcessPool(1) as pool:
        future = pool.submit(time.sleep, 2.0)
        started = time.monotonic()
        while sys.getswitchinterval() != pytest.approx(_gil.FAST_SWITCH_S):
            assert time.monotonic() - started < 1.0, "the worker start never shortened it"
            time.sleep(0.001)
        while sys.getswitchinterval() != pytest.approx(0.005) and time.monotonic() - started < 1.5:
            time.sleep(0.01)
        restored_after = time.monotonic() - started
        assert not future.done()  # restored while the first task still runs
        assert restored_after < 1.5
        future.result(timeout=30)
