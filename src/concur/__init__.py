"""concur: run work on processes and threads, safely, and see what happened."""

from __future__ import annotations

from ._supervise import MainGuardMissing
from .api import imap, map, run
from .errors import (
    ConcurError,
    PoolBroken,
    PoolClosed,
    ProcessPoolBroken,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    ThreadNotKillable,
    ThreadPoolBroken,
    WorkerCrashed,
    WorkerStateError,
)
from .processes import ProcessPool
from .spawn import Worker, process, spawn, thread
from .threads import ThreadPool

__version__ = "0.1.0"

__all__ = (
    "ConcurError",
    "MainGuardMissing",
    "PoolBroken",
    "PoolClosed",
    "ProcessPool",
    "ProcessPoolBroken",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "ThreadNotKillable",
    "ThreadPool",
    "ThreadPoolBroken",
    "Worker",
    "WorkerCrashed",
    "WorkerStateError",
    "__version__",
    "imap",
    "map",
    "process",
    "run",
    "spawn",
    "thread",
)
