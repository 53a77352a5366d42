"""What ProcessPool does beyond ProcessPoolExecutor."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest

import concur


@pytest.fixture
def pool(start_method):
    executor = concur.ProcessPool(2, mp_context=start_method)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def test_lambdas_and_closures_run_in_processes(pool):
    offset = 10

    def closure(x):
        return x + offset

    assert pool.submit(lambda: os.getpid()).result(timeout=30) != os.getpid()
    assert pool.submit(closure, 5).result(timeout=30) == 15
    assert list(pool.map(lambda x: x * offset, range(4))) == [0, 10, 20, 30]
    assert list(pool.imap(closure, range(3))) == [10, 11, 12]


def _nested_failure():
    def inner_helper():
        raise KeyError("missing-key")

    inner_helper()


def test_worker_traceback_travels_with_the_exception(pool):
    with pytest.raises(KeyError) as info:
        pool.submit(_nested_failure).result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, concur.RemoteTraceback)
    assert "inner_helper" in cause.tb
    assert "_nested_failure" in cause.tb
    assert "missing-key" in str(cause)


def test_a_worker_that_exits_fails_only_its_task(pool):
    doomed = pool.submit(os._exit, 7)
    others = [pool.submit(pow, 2, i) for i in range(8)]
    with pytest.raises(concur.WorkerCrashed) as info:
        doomed.result(timeout=30)
    assert info.value.exitcode == 7
    assert "os._exit" in str(info.value) or "_exit" in str(info.value)
    assert [f.result(timeout=30) for f in others] == [2**i for i in range(8)]
    assert pool.submit(pow, 3, 3).result(timeout=30) == 27


def test_a_killed_worker_is_reported_with_its_signal(pool):
    doomed = pool.submit(_kill_self, signal.SIGKILL)
    with pytest.raises(concur.WorkerCrashed) as info:
        doomed.result(timeout=30)
    assert info.value.signal_name == "SIGKILL"
    assert "out of memory" in str(info.value)
    assert pool.submit(abs, -4).result(timeout=30) == 4


def _kill_self(sig):
    os.kill(os.getpid(), sig)


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def test_unpicklable_argument_fails_that_future_only(pool):
    future = pool.submit(repr, Unpicklable())
    with pytest.raises(concur.SerializationError, match="argument 0") as info:
        future.result(timeout=1)
    assert isinstance(info.value, pickle.PicklingError)
    assert pool.submit(abs, -1).result(timeout=30) == 1


def test_unpicklable_result_fails_that_task_only(pool):
    future = pool.submit(Unpicklable)
    with pytest.raises(concur.SerializationError, match="result"):
        future.result(timeout=30)
    assert pool.submit(abs, -2).result(timeout=30) == 2


class OddError(Exception):
    def __init__(self, a, b):  # pickle rebuilds it with one argument: that fails
        super().__init__(f"{a}/{b}")


def _raise_odd():
    raise OddError(1, 2)


def test_exception_that_cannot_be_rebuilt_arrives_as_remote_error(pool):
    with pytest.raises(concur.RemoteError) as info:
        pool.submit(_raise_odd).result(timeout=30)
    assert info.value.type_name.endswith("OddError")
    assert "1/2" in info.value.message
    assert "_raise_odd" in info.value.traceback


def test_max_tasks_per_child_replaces_workers(start_method):
    with concur.ProcessPool(1, mp_context=start_method, max_tasks_per_child=2) as pool:
        pids = [pool.submit(os.getpid).result(timeout=30) for _ in range(6)]
    assert len(set(pids)) == 3


def test_default_start_method_is_safe_with_threads():
    pool = concur.ProcessPool(1)
    expected = "forkserver" if sys.platform.startswith("linux") else "spawn"
    assert pool.start_method == expected
    pool.shutdown()


def test_functions_defined_in_main_work_under_spawn(tmp_path):
    script = tmp_path / "main_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import concur

            def triple(x):
                return 3 * x

            class Box:
                def __init__(self, v):
                    self.v = v

            if __name__ == "__main__":
                with concur.ProcessPool(2, mp_context="spawn") as pool:
                    print(list(pool.map(triple, range(4))))
                    print(pool.submit(lambda b: b.v + 1, Box(41)).result())
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["[0,", "3,", "6,", "9]", "42"]


def test_main_guard_missing_gives_a_short_clear_error(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import concur\n"
        "pool = concur.ProcessPool(1, mp_context='spawn')\n"
        "print(pool.submit(abs, -3).result(timeout=20))\n"
        "pool.shutdown()\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "MainGuardMissing" in out.stderr
    assert 'if __name__ == "__main__":' in out.stderr
