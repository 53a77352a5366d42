import concurrent.futures

import concur


def test_public_api_is_pinned():
    assert concur.__all__ == (
        "AutoPool",
        "ConcurError",
        "DaskPool",
        "Decision",
        "MainGuardMissing",
        "Measurements",
        "PoolBroken",
        "PoolClosed",
        "PoolInherited",
        "PoolStats",
        "PoolView",
        "ProcessPool",
        "ProcessPoolBroken",
        "RemoteError",
        "RemoteTraceback",
        "Results",
        "SerializationError",
        "Shared",
        "TaskOptions",
        "TaskStat",
        "TaskTimeout",
        "ThreadNotKillable",
        "ThreadPool",
        "ThreadPoolBroken",
        "WaitTimeout",
        "Worker",
        "WorkerCrashed",
        "WorkerInfo",
        "WorkerStateError",
        "WorkerStats",
        "__version__",
        "advise",
        "amap",
        "arun",
        "imap",
        "map",
        "process",
        "run",
        "share",
        "spawn",
        "thread",
    )
    for name in concur.__all__:
        assert hasattr(concur, name), name


def test_pools_are_executors():
    assert issubclass(concur.ThreadPool, concurrent.futures.Executor)
    assert issubclass(concur.ProcessPool, concurrent.futures.Executor)
    assert issubclass(concur.AutoPool, concurrent.futures.Executor)


def test_errors_share_one_root_and_keep_stdlib_types():
    for name in concur.__all__:
        obj = getattr(concur, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, Exception)
            and obj is not concur.RemoteTraceback
        ):
            assert issubclass(obj, concur.ConcurError), name
    assert issubclass(concur.ProcessPoolBroken, concurrent.futures.process.BrokenProcessPool)
    assert issubclass(concur.ThreadPoolBroken, concurrent.futures.thread.BrokenThreadPool)
    assert issubclass(concur.WorkerCrashed, concurrent.futures.process.BrokenProcessPool)
    assert issubclass(concur.PoolClosed, RuntimeError)
    assert issubclass(concur.TaskTimeout, TimeoutError)
    assert issubclass(concur.TaskTimeout, concurrent.futures.TimeoutError)
    assert issubclass(concur.WaitTimeout, TimeoutError)
    assert issubclass(concur.WaitTimeout, concurrent.futures.TimeoutError)


def test_dir_lists_the_public_names_and_nothing_borrowed():
    listed = dir(concur)
    assert set(concur.__all__) <= set(listed)
    assert "annotations" not in listed and "TYPE_CHECKING" not in listed and "Any" not in listed
    assert not hasattr(concur, "annotations")
