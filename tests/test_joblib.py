"""concur.joblib: joblib's own Parallel (and scikit-learn's n_jobs) on concur's
ProcessPool, with real worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
import psutil
import pytest
from joblib import Parallel, delayed, parallel_config

import concur.joblib
from concur import RemoteTraceback, TaskTimeout, WorkerCrashed
from docexamples import examples, printed


@pytest.fixture(autouse=True)
def no_warm_pool() -> Iterator[None]:
    yield
    concur.joblib.release_warm()


# -- what the tasks do ---------------------------------------------------------


def where(x: int) -> tuple[int, int, str | None]:
    """x squared, the pid that computed it, and the CPU budget concur's workers set."""
    return x * x, os.getpid(), os.environ.get("CONCUR_CPU_BUDGET")


def fail_at_three(x: int) -> int:
    if x == 3:
        raise KeyError(f"no {x}")
    return x


def exit_at_two(x: int) -> int:
    if x == 2:
        os._exit(7)
    return x


def sleep_for(seconds: float, pid_file: str | None = None) -> float:
    if pid_file is not None:
        Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return seconds


def inner_where(x: int) -> tuple[int, str]:
    return os.getpid(), threading.current_thread().name


def outer(x: int) -> tuple[int, list[tuple[int, str]], str]:
    inner = Parallel(n_jobs=2)(delayed(inner_where)(i) for i in range(4))
    backend, _ = joblib.parallel.get_active_backend()
    return os.getpid(), inner, type(backend).__name__


def pids_of(results: list[tuple[int, int, str | None]]) -> set[int]:
    return {pid for _, pid, _ in results}


# -- values, errors, crashes ---------------------------------------------------


def test_values_come_back_in_order_from_concur_workers() -> None:
    with parallel_config(backend="concur", n_jobs=2):
        results = Parallel()(delayed(where)(i) for i in range(20))
    assert [value for value, _, _ in results] == [i * i for i in range(20)]
    assert os.getpid() not in pids_of(results)
    assert 1 <= len(pids_of(results)) <= 2
    assert {budget for _, _, budget in results} != {None}  # set by concur's worker set-up


def test_lambdas_and_closures_run_in_workers() -> None:
    offset = 10
    with parallel_config(backend="concur", n_jobs=2):
        got = Parallel()(delayed(lambda x: x + offset)(i) for i in range(5))
    assert got == [10, 11, 12, 13, 14]


def test_the_original_exception_type_arrives_with_the_workers_traceback() -> None:
    with parallel_config(backend="concur", n_jobs=2):
        with pytest.raises(KeyError, match="no 3") as caught:
            Parallel()(delayed(fail_at_three)(i) for i in range(10))
        cause = caught.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "fail_at_three" in str(cause)
        # The backend goes on: the next call in the same block works.
        assert Parallel()(delayed(fail_at_three)(i) for i in range(3)) == [0, 1, 2]


def test_a_worker_that_dies_raises_worker_crashed_and_the_next_call_works() -> None:
    with parallel_config(backend="concur", n_jobs=2):
        with pytest.raises(WorkerCrashed) as caught:
            Parallel()(delayed(exit_at_two)(i) for i in range(6))
        assert caught.value.exitcode == 7
        assert "exit_at_two (a joblib batch of" in str(caught.value)
        assert Parallel()(delayed(exit_at_two)(i) for i in [0, 1, 3]) == [0, 1, 3]


def test_a_managed_parallel_goes_on_after_a_crash() -> None:
    with Parallel(n_jobs=2, backend="concur") as parallel:
        with pytest.raises(WorkerCrashed):
            parallel(delayed(exit_at_two)(i) for i in range(4))
        assert parallel(delayed(where)(i) for i in range(4))[3][0] == 9


def fail_once_started(pid_file: str) -> None:
    """Raise once the other call has started (it wrote its pid)."""
    deadline = time.monotonic() + 20
    while not Path(pid_file).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    raise KeyError("the other call is running")


def test_an_error_kills_the_calls_still_running(tmp_path: Path) -> None:
    pid_file = str(tmp_path / "pid")
    start = time.monotonic()
    with pytest.raises(KeyError, match="the other call is running"):
        Parallel(n_jobs=2, backend="concur")(
            [delayed(sleep_for)(60, pid_file), delayed(fail_once_started)(pid_file)]
        )
    assert time.monotonic() - start < 30  # not the 60 s the other call sleeps
    pid = int(Path(pid_file).read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# -- concur's options ------------------------------------------------------------


def test_task_timeout_stops_a_call_past_its_limit() -> None:
    start = time.monotonic()
    with (
        parallel_config(backend="concur", n_jobs=2, task_timeout=0.5),
        pytest.raises(TaskTimeout, match="sleep_for"),
    ):
        Parallel()(delayed(sleep_for)(s) for s in [0.01, 0.01, 60, 0.01])
    assert time.monotonic() - start < 30


def test_options_given_to_parallel_reach_the_pool() -> None:
    # max_tasks_per_child=1: a fresh worker for every call (one call per batch).
    results = Parallel(n_jobs=2, backend="concur", max_tasks_per_child=1)(
        delayed(where)(i) for i in range(6)
    )
    assert len(pids_of(results)) == 6


_HELD: list[bytes] = []


def grow_and_where(x: int) -> tuple[int, int, str | None]:
    """Keep 80 MB in the worker (past the limit below), then say where it ran."""
    _HELD.append(b"\1" * (80 << 20))  # written, so resident
    return where(x)


def test_a_memory_limit_given_to_the_backend_retires_workers_past_it() -> None:
    # One call per batch: each call leaves its worker past 60 MB, so every
    # call meets a fresh worker; without the limit two workers serve all six.
    with parallel_config(backend="concur", n_jobs=2, max_memory_per_child="60MB"):
        results = Parallel(batch_size=1)(delayed(grow_and_where)(i) for i in range(6))
    assert [value for value, _, _ in results] == [i * i for i in range(6)]
    assert len(pids_of(results)) == 6
    with parallel_config(backend="concur", n_jobs=2):
        unlimited = Parallel(batch_size=1)(delayed(where)(i) for i in range(6))
    assert len(pids_of(unlimited)) <= 2


def test_retries_rerun_a_call_whose_worker_died(tmp_path: Path) -> None:
    marker = tmp_path / "died-once"

    def dies_once(x: int) -> int:
        if x == 1 and not marker.exists():
            marker.write_text("")
            os._exit(3)
        return x

    with parallel_config(backend="concur", n_jobs=2, retries=1):
        assert Parallel()(delayed(dies_once)(i) for i in range(4)) == [0, 1, 2, 3]
    assert marker.exists()


def test_an_unknown_option_says_what_the_backend_takes() -> None:
    with pytest.raises(TypeError, match="task_timeout"):
        parallel_config(backend="concur", idle_worker_timeout=10)
    with pytest.raises(TypeError, match="does not take bogus"):
        Parallel(n_jobs=2, backend="concur", bogus=1)(delayed(abs)(i) for i in range(2))


def test_joblib_timeout_stops_the_work() -> None:
    start = time.monotonic()
    with pytest.raises(joblib.parallel.TimeoutError):
        Parallel(n_jobs=2, backend="concur", timeout=0.5)(delayed(sleep_for)(s) for s in [0.01, 60])
    assert time.monotonic() - start < 30


# -- n_jobs, nesting, generators, warm pools ---------------------------------------


def test_n_jobs_counts_back_from_the_cpus() -> None:
    from concur._proc import cpu_count

    with parallel_config(backend="concur"):
        assert joblib.effective_n_jobs(-1) == cpu_count()
        assert joblib.effective_n_jobs(-2) == max(cpu_count() - 1, 1)
        assert joblib.effective_n_jobs(3) == 3
        with pytest.raises(ValueError, match="n_jobs == 0"):
            joblib.effective_n_jobs(0)
    results = Parallel(n_jobs=-1, backend="concur")(delayed(where)(i) for i in range(4))
    assert [value for value, _, _ in results] == [0, 1, 4, 9]


def test_n_jobs_one_runs_in_the_caller() -> None:
    results = Parallel(n_jobs=1, backend="concur")(delayed(where)(i) for i in range(3))
    assert pids_of(results) == {os.getpid()}


def test_a_nested_parallel_runs_on_threads_inside_the_worker() -> None:
    with parallel_config(backend="concur", n_jobs=2):
        results = Parallel()(delayed(outer)(i) for i in range(2))
    for pid, inner, backend in results:
        assert pid != os.getpid()
        assert backend == "ThreadingBackend"
        assert {inner_pid for inner_pid, _ in inner} == {pid}


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_results_as_a_generator(return_as: str) -> None:
    with parallel_config(backend="concur", n_jobs=2):
        out = Parallel(return_as=return_as)(delayed(where)(i) for i in range(8))
        assert not isinstance(out, list)
        values = [value for value, _, _ in out]
    if return_as == "generator":
        assert values == [i * i for i in range(8)]
    else:
        assert sorted(values) == [i * i for i in range(8)]


def test_dropping_a_generator_kills_the_calls_still_running(tmp_path: Path) -> None:
    pid_file = str(tmp_path / "pid")
    out = Parallel(n_jobs=2, backend="concur", return_as="generator")(
        [delayed(sleep_for)(0.01), delayed(sleep_for)(60, pid_file)]
    )
    assert next(out) == 0.01
    deadline = time.monotonic() + 20
    while not Path(pid_file).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = int(Path(pid_file).read_text())
    with pytest.warns(
        UserWarning, match="still being processed by the workers have been cancelled"
    ):
        out.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_sharedmem_is_refused_for_parallel_and_threads_under_config() -> None:
    with pytest.raises(ValueError, match="does not support shared memory"):
        Parallel(n_jobs=2, backend="concur", require="sharedmem")
    with parallel_config(backend="concur", n_jobs=2):
        results = Parallel(require="sharedmem")(delayed(where)(i) for i in range(4))
    assert pids_of(results) == {os.getpid()}


def test_the_next_call_takes_over_the_warm_pool() -> None:
    first = Parallel(n_jobs=2, backend="concur")(delayed(where)(i) for i in range(8))
    second = Parallel(n_jobs=2, backend="concur")(delayed(where)(i) for i in range(8))
    assert pids_of(second) & pids_of(first)  # the same workers (see the test below)
    other = Parallel(n_jobs=2, backend="concur", retries=1)(delayed(where)(i) for i in range(4))
    assert not pids_of(other) & pids_of(first)  # other options: another pool
    concur.joblib.release_warm()
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) for p in pids_of(other)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(psutil.pid_exists(p) for p in pids_of(first) | pids_of(other))


def test_keep_warm_zero_stops_the_pool_at_the_end_of_each_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONCUR_KEEP_WARM", "0")
    first = Parallel(n_jobs=2, backend="concur")(delayed(where)(i) for i in range(4))
    second = Parallel(n_jobs=2, backend="concur")(delayed(where)(i) for i in range(4))
    assert not pids_of(first) & pids_of(second)


def test_without_joblib_the_error_says_what_to_install() -> None:
    hide = "import sys; sys.modules['joblib'] = None; import concur.joblib"
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'concur[joblib]'" in done.stderr


# -- scikit-learn ------------------------------------------------------------------


def test_scikit_learn_n_jobs_runs_on_concur() -> None:
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score
    from sklearn.utils.parallel import Parallel as SkParallel
    from sklearn.utils.parallel import delayed as sk_delayed

    X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    model = RandomForestClassifier(n_estimators=10, random_state=0)
    alone = cross_val_score(model, X, y, cv=3)
    with parallel_config(backend="concur", n_jobs=2):
        spread = cross_val_score(model, X, y, cv=3)
        pids = SkParallel()(sk_delayed(where)(i) for i in range(4))
    assert list(spread) == list(alone)
    assert os.getpid() not in pids_of(pids)


def _fit_where_logged(log: str) -> object:
    """A scikit-learn classifier whose fit notes which process ran it and
    the CPU budget it found (built here: scikit-learn may be missing)."""
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.dummy import DummyClassifier

    class Logged(ClassifierMixin, BaseEstimator):
        def __init__(self, log: str = log) -> None:
            self.log = log

        def fit(self, X, y):
            with open(self.log, "a") as out:
                out.write(f"{os.getpid()} {os.environ.get('CONCUR_CPU_BUDGET')}\n")
            self.inner_ = DummyClassifier().fit(X, y)
            self.classes_ = self.inner_.classes_
            return self

        def predict(self, X):
            return self.inner_.predict(X)

    return Logged(log)


def test_scikit_learns_own_fits_run_in_concur_workers(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    from sklearn.datasets import make_classification
    from sklearn.model_selection import cross_val_score

    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    log = tmp_path / "fits"
    with parallel_config(backend="concur", n_jobs=2):
        scores = cross_val_score(_fit_where_logged(str(log)), X, y, cv=4)
    assert len(scores) == 4
    fits = [line.split() for line in log.read_text().splitlines()]
    assert len(fits) == 4
    assert os.getpid() not in {int(pid) for pid, _ in fits}  # every fit ran in a worker
    # a concur worker's CPU share (cores // workers), which no other backend sets
    assert {budget for _, budget in fits} == {str(max(1, len(os.sched_getaffinity(0)) // 2))}


# -- docs/joblib.md ----------------------------------------------------------------


def test_docs_have_examples() -> None:
    assert len(examples("joblib.md")) == 3


@pytest.mark.parametrize("index", range(3))
def test_docs_example_prints_what_is_shown(index: int, tmp_path: Path) -> None:
    code, shown = examples("joblib.md")[index]
    if "sklearn" in code:
        pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    assert printed(code, tmp_path, timeout=120) == shown
