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
        self.b = b


def _raise_odd():
    raise OddError(1, 2)


def test_exception_whose_init_takes_other_arguments_keeps_its_type(pool):
    with pytest.raises(OddError) as info:
        pool.submit(_raise_odd).result(timeout=30)
    assert str(info.value) == "1/2"
    assert info.value.b == 2
    assert "_raise_odd" in str(info.value.__cause__)


def _raise_from_a_module_only_the_worker_has(folder):
    sys.path.insert(0, folder)
    import worker_only_errors

    raise worker_only_errors.LocalError("from the worker")


def test_exception_that_cannot_be_rebuilt_arrives_as_remote_error(pool, tmp_path):
    (tmp_path / "worker_only_errors.py").write_text("class LocalError(Exception):\n    pass\n")
    with pytest.raises(concur.RemoteError) as info:
        pool.submit(_raise_from_a_module_only_the_worker_has, str(tmp_path)).result(timeout=30)
    assert info.value.type_name == "worker_only_errors.LocalError"
    assert info.value.message == "from the worker"
    assert "ModuleNotFoundError" in str(info.value)  # the real reason, not a guess
    assert "_raise_from_a_module_only_the_worker_has" in info.value.traceback


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


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_script_without_a_main_guard_works(tmp_path, method):
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import concur\n"
        f"pool = concur.ProcessPool(1, mp_context={method!r})\n"
        "print(pool.submit(abs, -3).result(timeout=20))\n"
        "pool.shutdown()\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, "3\n", "")


def test_main_guard_missing_gives_a_short_clear_error(tmp_path):
    # multiprocessing itself still re-runs the main module in a spawned child:
    # a pool made at its top level then starts in every child.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import multiprocessing, concur\n"
        "pool = concur.ProcessPool(1)\n"
        "child = multiprocessing.get_context('spawn').Process(target=print)\n"
        "child.start(); child.join()\n"
        "print(child.exitcode)\n"
        "pool.shutdown()\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.stdout == "78\n"  # the child said why and left; once, not in a loop
    assert out.stderr.count("was started while a child process was importing the main") == 1
    assert 'if __name__ == "__main__":' in out.stderr
