"""concur.DaskPool and backend="dask", against a LocalCluster of two worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import concur
from conftest import SHARED_SERVICES, wait_gone

distributed = pytest.importorskip(
    "distributed", reason="the dask extra is not installed (pip install 'concur[dask]')"
)


def dask_workers() -> set[int]:
    return {
        child.pid
        for child in psutil.Process().children(recursive=True)
        if child.name().startswith("dask")
    }


def _is_dask_worker(child: psutil.Process) -> bool:
    return child.name().startswith("dask")


@pytest.fixture(scope="module")
def cluster():
    import dask

    # Each worker holds only the task it runs: when a worker is killed, Dask
    # counts every task it held against that task's allowed failures, so a
    # task queued behind the killer could share its fate by bad luck.
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        local = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            host="127.0.0.1",
        )
    SHARED_SERVICES.append(_is_dask_worker)  # kept across this module's tests
    try:
        yield local
    finally:
        local.close()
        SHARED_SERVICES.remove(_is_dask_worker)
    deadline = time.monotonic() + 10
    while dask_workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not dask_workers(), "closing the cluster left worker processes"


@pytest.fixture
def pool(cluster):
    with concur.DaskPool(cluster.scheduler_address) as joined:
        yield joined


def square(x):
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise KeyError(f"item {x} is bad")
    return x


def test_map_keeps_order_and_chunks_small_items(pool):
    assert (pool.max_workers, pool.local) == (2, False)  # joined the module's cluster
    assert list(pool.map(square, range(1000))) == [x * x for x in range(1000)]
    deadline = time.monotonic() + 5  # the cluster forgets results once they are here
    while pool.client.who_has() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pool.client.who_has()


def test_imap_streams_lazily_from_an_endless_iterator(pool):
    import itertools

    results = pool.imap(square, itertools.count())
    assert [next(results) for _ in range(50)] == [x * x for x in range(50)]


def test_lambdas_and_closures_run_on_the_cluster(pool):
    offset = 7
    assert list(pool.map(lambda x: x + offset, [1, 2])) == [8, 9]


def test_a_remote_exception_keeps_its_type_and_traceback(pool):
    future = pool.submit(fail_on, 3, 3)
    with pytest.raises(KeyError, match="item 3 is bad") as info:
        future.result(timeout=30)
    assert isinstance(info.value.__cause__, concur.RemoteTraceback)
    assert "fail_on" in str(info.value.__cause__)
    results = list(pool.imap(fail_on, range(5), [2] * 5, return_exceptions=True))
    assert results[:2] == [0, 1] and results[3:] == [3, 4]
    assert isinstance(results[2], KeyError)


def die(x):
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return x


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_task_fails_that_task_only(pool):
    # Dask retries a task whose worker died on other workers (three times by
    # default); the task that kills every worker it runs on then fails alone.
    futures = [pool.submit(die, x) for x in range(10)]
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result(timeout=60))
        except concur.WorkerCrashed as crash:
            outcomes.append(crash)
    assert isinstance(outcomes[5], concur.WorkerCrashed)
    assert "KilledWorker" in str(outcomes[5])
    assert [o for i, o in enumerate(outcomes) if i != 5] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert pool.submit(square, 4).result(timeout=60) == 16  # the cluster goes on


def test_a_task_past_its_timeout_fails_on_time(pool):
    started = time.monotonic()
    future = pool.options(timeout=0.5).submit(time.sleep, 3)
    with pytest.raises(concur.TaskTimeout, match="Dask cannot stop"):
        future.result(timeout=30)
    assert time.monotonic() - started < 1.5
    with pytest.raises(TimeoutError):  # and it is a TimeoutError
        raise future.exception()


def test_cancel_a_queued_task(pool):
    blockers = [pool.submit(time.sleep, 0.5) for _ in range(2)]
    queued = pool.submit(square, 3)
    assert queued.cancel()
    assert queued.cancelled()
    assert [b.result(timeout=30) for b in blockers] == [None, None]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_arun_and_amap_on_the_cluster(pool):
    pytest.importorskip("anyio", reason="the async extra is not installed")
    assert await pool.arun(square, 12) == 144
    assert [x async for x in pool.amap(square, range(10))] == [x * x for x in range(10)]
    unordered = pool.amap(square, range(10), ordered=False)
    assert sorted([x async for x in unordered]) == [x * x for x in range(10)]
    with pytest.raises(KeyError, match="item 2 is bad"):
        await pool.arun(fail_on, 2, 2)


def test_backend_dask_in_map_imap_and_run(cluster, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    results = concur.map(square, range(20), backend="dask")
    assert results == [x * x for x in range(20)]
    assert results.decision.backend == "dask" and results.decision.source == "given"
    stream = concur.imap(square, range(5), backend="dask")
    assert list(stream) == [0, 1, 4, 9, 16]
    assert concur.run(square, 9, backend="dask") == 81
    with pytest.raises(concur.TaskTimeout):
        concur.run(time.sleep, 3, backend="dask", timeout=0.3)


def test_concur_backend_dask_sends_map_imap_and_run_to_the_cluster(cluster, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    monkeypatch.setenv("CONCUR_BACKEND", "dask")
    results = concur.map(square, range(20))
    assert results == [x * x for x in range(20)]
    assert results.decision.backend == "dask" and results.decision.source == "CONCUR_BACKEND"
    assert list(concur.imap(square, range(5))) == [0, 1, 4, 9, 16]
    assert concur.run(os.getpid) != os.getpid()


def test_concur_map_cli_with_a_scheduler(cluster, tmp_path):
    source = tmp_path / "numbers.txt"
    source.write_text("a\nbb\nccc\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "concur",
            "map",
            "builtins:len",
            str(source),
            "--backend",
            "dask",
            "--scheduler",
            cluster.scheduler_address,
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "2", "3"]
    assert "dask" in done.stderr


def test_an_embedded_local_cluster_starts_and_leaves_nothing_behind(cluster):
    before = dask_workers()  # the module's cluster
    with concur.DaskPool(n_workers=2) as pool:
        assert (pool.max_workers, pool.local) == (2, True)
        assert len(dask_workers() - before) == 2
        assert sum(pool.map(square, range(100))) == sum(x * x for x in range(100))
    deadline = time.monotonic() + 10
    while dask_workers() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dask_workers() - before == set(), "shutdown() left the local cluster's workers"


# Another local user's program: it knows the scheduler's address, nothing more.
STRANGER = """
import os, sys, distributed
from distributed.security import Security

address = sys.argv[1]
attempts = [
    (address, None),  # as given
    (address.replace("tls://", "tcp://"), None),  # without TLS
    (address, Security.temporary()),  # with TLS credentials of its own
]
for where, security in attempts:
    try:
        client = distributed.Client(where, timeout=5, security=security, set_as_default=False)
        print("ran as", client.submit(os.getpid).result(timeout=5), flush=True)
        client.close()
    except Exception as exc:
        print("refused", type(exc).__name__, flush=True)
"""


def test_an_embedded_local_cluster_refuses_other_programs(cluster):
    before = dask_workers()  # the module's cluster
    with concur.DaskPool(n_workers=1) as pool:
        assert pool.address.startswith("tls://127.0.0.1:")
        tried = subprocess.run(
            [sys.executable, "-c", STRANGER, pool.address],
            capture_output=True,
            text=True,
            timeout=120,
        )
        outcomes = [line.split()[0] for line in tried.stdout.splitlines()]
        assert outcomes == ["refused", "refused", "refused"], tried.stdout + tried.stderr
        assert pool.submit(square, 7).result(timeout=30) == 49  # its own client still works
    deadline = time.monotonic() + 10
    while dask_workers() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dask_workers() - before == set()


def test_joining_with_cluster_options_is_refused(cluster):
    with pytest.raises(TypeError, match="cluster options apply to a local cluster"):
        concur.DaskPool(cluster.scheduler_address, n_workers=3)


def _ends(array) -> float:
    return float(array[0] + array[-1])


def test_a_shared_handle_is_scattered_once_and_received_as_the_object(pool):
    import numpy as np

    data = np.arange(1 << 20, dtype=np.int64)
    with concur.share(data) as shared:
        assert pool.submit(_ends, shared).result(timeout=60) == _ends(data)
        assert pool.submit(lambda *, a: _ends(a), a=shared).result(timeout=60) == _ends(data)
        assert list(pool.map(_ends, [shared] * 6)) == [_ends(data)] * 6
        held = {key for keys in pool.client.has_what().values() for key in keys}
        assert len([key for key in held if "ndarray" in str(key)]) == 1, held
    with pytest.raises(concur.SerializationError, match="closed"):
        pool.submit(_ends, shared)


def test_a_worker_count_where_the_address_goes_says_what_to_write():
    # ProcessPool(2) habits: DaskPool's first argument is an address.
    with pytest.raises(TypeError, match=r"DaskPool\(n_workers=N\)"):
        concur.DaskPool(2)  # type: ignore[arg-type]


def own_pid() -> int:
    return os.getpid()


def hang() -> None:
    time.sleep(60)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_cancelling_an_awaited_call_kills_its_worker_on_the_pools_own_cluster(loop):
    anyio = pytest.importorskip("anyio", reason="the async extra is not installed")
    with concur.DaskPool(n_workers=1) as pool:
        worker = pool.submit(own_pid).result(timeout=30)

        async def cancelled_while_it_runs() -> float:
            with anyio.move_on_after(0.5):
                await pool.arun(hang)
            return time.monotonic()

        cancelled_at = anyio.run(cancelled_while_it_runs, backend=loop)
        wait_gone([worker], limit=0.5)  # it no longer runs the cancelled call
        assert time.monotonic() - cancelled_at < 1.0
        # Its slot is free again: a fresh worker takes the next call.
        assert pool.submit(own_pid).result(timeout=30) != worker
