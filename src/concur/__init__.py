"""concur: run work on processes and threads, safely, and see what happened."""

from __future__ import annotations

from ._pool import PoolView, TaskOptions
from .api import imap, map, run
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
    WorkerCrashed,
    WorkerStateError,
)
from .processes import ProcessPool
from .ps import WorkerInfo
from .spawn import Worker, process, spawn, thread
from .threads import ThreadPool

__version__ = "0.1.0"

__all__ = (
    "ConcurError",
    "MainGuardMissing",
    "PoolBroken",
    "PoolClosed",
    "PoolView",
    "ProcessPool",
    "ProcessPoolBroken",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "TaskOptions",
    "TaskTimeout",
    "ThreadNotKillable",
    "ThreadPool",
    "ThreadPoolBroken",
    "Worker",
    "WorkerCrashed",
    "WorkerInfo",
    "WorkerStateError",
    "__version__",
    "imap",
    "map",
    "process",
    "run",
    "spawn",
    "thread",
)
