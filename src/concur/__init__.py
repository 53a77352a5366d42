"""concur: run work on processes and threads, safely, and see what happened."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Names load on first use (PEP 562): ``import concur`` stays cheap, and a
# process that needs one part (a server's master, a worker) imports only it.
_WHERE = {
    "PoolView": "._pool",
    "TaskOptions": "._pool",
    "Results": ".api",
    "amap": "._async",
    "arun": "._async",
    "imap": ".api",
    "map": ".api",
    "run": ".api",
    "AutoPool": ".auto",
    "Decision": ".auto",
    "Measurements": ".auto",
    "advise": ".auto",
    "DaskPool": ".dask_pool",
    "ConcurError": ".errors",
    "MainGuardMissing": ".errors",
    "PoolBroken": ".errors",
    "PoolClosed": ".errors",
    "PoolInherited": ".errors",
    "ProcessPoolBroken": ".errors",
    "RemoteError": ".errors",
    "RemoteTraceback": ".errors",
    "SerializationError": ".errors",
    "TaskTimeout": ".errors",
    "ThreadNotKillable": ".errors",
    "ThreadPoolBroken": ".errors",
    "WaitTimeout": ".errors",
    "WorkerCrashed": ".errors",
    "WorkerStateError": ".errors",
    "ProcessPool": ".processes",
    "WorkerInfo": ".ps",
    "PoolStats": "._stats",
    "TaskStat": "._stats",
    "WorkerStats": "._stats",
    "Worker": "._spawn",
    "process": "._spawn",
    "spawn": "._spawn",
    "share": "._share",
    "Shared": "._share",
    "thread": "._spawn",
    "ThreadPool": ".threads",
}

if TYPE_CHECKING:
    from ._async import amap, arun
    from ._pool import PoolView, TaskOptions
    from ._share import Shared, share
    from ._spawn import Worker, process, spawn, thread
    from ._stats import PoolStats, TaskStat, WorkerStats
    from .api import Results, imap, map, run
    from .auto import AutoPool, Decision, Measurements, advise
    from .dask_pool import DaskPool
    from .errors import (
        ConcurError,
        MainGuardMissing,
        PoolBroken,
        PoolClosed,
        PoolInherited,
        ProcessPoolBroken,
        RemoteError,
        RemoteTraceback,
        SerializationError,
        TaskTimeout,
        ThreadNotKillable,
        ThreadPoolBroken,
        WaitTimeout,
        WorkerCrashed,
        WorkerStateError,
    )
    from .processes import ProcessPool
    from .ps import WorkerInfo
    from .threads import ThreadPool


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'concur' has no attribute {name!r}")
    import importlib

    if where not in (".errors", ".ps", "._stats"):
        # What runs work imports much (multiprocessing, cloudpickle): put the
        # Ctrl-C-at-exit handling in place first, so a press during those
        # imports prints one traceback (see _exit).
        importlib.import_module("._exit", __name__)
    # Importing reads files, and each read lets go of the GIL: beside a
    # thread that computes, taking it back waits out the switch interval
    # every time (a second and more for concur.map's imports). A short
    # interval while concur's modules load keeps that to milliseconds.
    _gil = importlib.import_module("._gil", __name__)
    with _gil.responsive():
        value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    # The public names and the module's own dunders, not what it imported for itself.
    return sorted({name for name in globals() if name.startswith("__")} | set(__all__))


__version__ = "0.1.0"

del annotations  # the __future__ feature, not a name of concur's

__all__ = (
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
