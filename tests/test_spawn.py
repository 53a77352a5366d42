"""concur.spawn: the seed's Process and Thread under one handle."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import concur


def add(a, b=0):
    return a + b


def boom():
    raise LookupError("nothing here")


def big():
    return b"x" * 5_000_000


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_result_and_facts(kind):
    worker = concur.spawn(add, 2, b=3, kind=kind, name="adder")
    assert worker.result(timeout=30) == 5
    assert worker.name == "adder"
    assert worker.exitcode == 0
    assert not worker.is_alive()
    assert worker.daemon is False
    if kind == "process":
        assert worker.pid != os.getpid()
        assert worker.ident == worker.pid
    else:
        assert worker.pid == os.getpid()
        assert worker.ident != threading.get_ident()


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_exception_is_reraised_by_result(kind):
    worker = concur.spawn(boom, kind=kind)
    with pytest.raises(LookupError, match="nothing here"):
        worker.result(timeout=30)
    assert worker.exitcode in (0, 1)  # a process sent the error back and exited normally


def test_thread_exitcode_tells_return_from_raise():
    ok, bad = concur.spawn(add, 1, kind="thread"), concur.spawn(boom, kind="thread")
    ok.join(10)
    bad.join(10)
    assert (ok.exitcode, bad.exitcode) == (0, 1)


def test_large_result_does_not_deadlock_join():
    worker = concur.spawn(big)
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert len(worker.result()) == 5_000_000


def test_lambda_and_closure_in_a_process():
    secret = 41
    assert concur.spawn(lambda: secret + 1).result(timeout=30) == 42


def test_result_timeout_then_kill():
    worker = concur.spawn(time.sleep, 30)
    with pytest.raises(TimeoutError):
        worker.result(timeout=0.2)
    worker.kill()
    worker.join(10)
    assert worker.exitcode == -signal.SIGKILL
    with pytest.raises(concur.WorkerCrashed, match="SIGKILL"):
        worker.result()


def test_terminate_a_process():
    worker = concur.spawn(time.sleep, 30)
    worker.terminate()
    worker.join(10)
    assert worker.exitcode == -signal.SIGTERM


def test_threads_cannot_be_killed_and_say_why():
    stop = threading.Event()
    worker = concur.spawn(stop.wait, 10, kind="thread")
    for action in (worker.kill, worker.terminate):
        with pytest.raises(concur.ThreadNotKillable, match=r"threading\.Event"):
            action()
    stop.set()
    worker.join(10)


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_daemon_cannot_change_after_start(kind):
    worker = concur.spawn(add, 1, kind=kind, daemon=True)
    assert worker.daemon is True
    with pytest.raises(concur.WorkerStateError, match="spawn"):
        worker.daemon = False
    worker.join(10)


def test_bad_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        concur.spawn(add, 1, kind="fiber")


@concur.process
def cube(x):
    return x**3


@concur.thread
def whoami():
    return threading.current_thread().name


def test_decorators_return_futures(shared_pools):
    future = cube(3)
    assert future.result(timeout=30) == 27
    assert whoami().result(timeout=30) != threading.current_thread().name


def test_decorator_with_an_explicit_pool():
    with concur.ProcessPool(1) as pool:

        @concur.process(pool=pool)
        def pid():
            return os.getpid()

        assert pid().result(timeout=30) != os.getpid()


@pytest.fixture
def shared_pools():
    """The decorators' shared pools live until exit; tests close them."""
    yield
    import sys

    spawn_module = sys.modules["concur._spawn"]  # the module, not the function

    for pool in spawn_module._shared.values():
        pool.shutdown()
    spawn_module._shared.clear()
