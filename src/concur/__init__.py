"""concur: run work on processes and threads, safely, and see what happened."""

from __future__ import annotations

from ._pool import PoolView, TaskOptions
from .api import Results, imap, map, run
from .auto import AutoPool, Decision, Measurements, advise
from .dask_pool import DaskPool
from .errors import (
    ConcurError,
    MainGuardMissing,
    PoolBroken,
    PoolClosed,
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
from .spawn import Worker, process, spawn, thread
from .threads import ThreadPool

__version__ = "0.1.0"

__all__ = (
    "AutoPool",
    "ConcurError",
    "DaskPool",
    "Decision",
    "MainGuardMissing",
    "Measurements",
    "PoolBroken",
    "PoolClosed",
    "PoolView",
    "ProcessPool",
    "ProcessPoolBroken",
    "RemoteError",
    "RemoteTraceback",
    "Results",
    "SerializationError",
    "TaskOptions",
    "TaskTimeout",
    "ThreadNotKillable",
    "ThreadPool",
    "ThreadPoolBroken",
    "WaitTimeout",
    "Worker",
    "WorkerCrashed",
    "WorkerInfo",
    "WorkerStateError",
    "__version__",
    "advise",
    "imap",
    "map",
    "process",
    "run",
    "spawn",
    "thread",
)
