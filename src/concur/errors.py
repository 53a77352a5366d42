"""Every error concur raises, under one root: :class:`ConcurError`.

Where the standard library raises a type of its own for the same event
(``BrokenProcessPool``, ``RuntimeError`` after shutdown, ``TimeoutError``,
``PicklingError``), the concur error subclasses it too, so ``except`` clauses
written for ``concurrent.futures`` keep catching it.

Each error carries the facts as attributes and its message says what to do.
"""

from __future__ import annotations

import os
import pickle
from concurrent import futures
from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.process import _RemoteTraceback as _StdRemoteTraceback
from concurrent.futures.thread import BrokenThreadPool

__all__ = [
    "ConcurError",
    "MainGuardMissing",
    "PoolBroken",
    "PoolClosed",
    "PoolInherited",
    "ProcessPoolBroken",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeout",
    "ThreadNotKillable",
    "ThreadPoolBroken",
    "WaitTimeout",
    "WorkerCrashed",
    "WorkerStateError",
]


class ConcurError(Exception):
    """Root of every error raised by concur itself."""


class MainGuardMissing(ConcurError, RuntimeError):
    """A process was started while a child was importing the main module
    (the script lacks ``if __name__ == "__main__":``)."""


class PoolClosed(ConcurError, RuntimeError):
    """A task was submitted to a pool that is shut down (or shutting down)."""


class PoolInherited(ConcurError, RuntimeError):
    """A pool was used in a process that inherited it through ``os.fork()``.

    Its workers, pipes and threads belong to the process that created it;
    the child must create a pool of its own.
    """

    def __init__(self, kind: str, owner: int) -> None:
        super().__init__(
            f"this {kind} belongs to process {owner}; process {os.getpid()} inherited it "
            "through os.fork() and cannot use it (its workers and pipes are the parent's). "
            "Create a new pool in the child."
        )
        self.owner = owner


class PoolBroken(ConcurError, BrokenExecutor):
    """The pool cannot run tasks any more (its worker initializer failed)."""


class ProcessPoolBroken(PoolBroken, BrokenProcessPool):
    """A :class:`concur.ProcessPool` cannot run tasks any more."""


class ThreadPoolBroken(PoolBroken, BrokenThreadPool):
    """A :class:`concur.ThreadPool` cannot run tasks any more."""


class SerializationError(ConcurError, pickle.PicklingError, TypeError):
    """An object could not be sent to or from a worker process.

    ``what`` names the object ("argument", "result", "exception", "callable").
    ``index`` is the place in the input of the item that could not be sent
    by ``map``/``imap`` (0 for the first), or None.
    """

    def __init__(self, message: str, what: str = "object", index: int | None = None) -> None:
        super().__init__(message)
        self.what = what
        self.index = index


class WorkerCrashed(ConcurError, BrokenProcessPool):
    """The worker process running a task died before the task finished.

    In a pool only that task fails: the pool replaces the worker and goes on.
    ``pid``, ``exitcode`` (negative: killed by a signal) and ``signal_name``
    describe the death; ``hint`` suggests a likely cause (or states it, when
    concur knows it: ``kill()`` was called). ``in_pool`` is False for a
    ``concur.spawn`` worker.
    """

    def __init__(
        self,
        pid: int | None,
        exitcode: int | None,
        task: str | None = None,
        *,
        hint: str | None = None,
        in_pool: bool = True,
    ) -> None:
        self.pid = pid
        self.exitcode = exitcode
        self.task = task
        self.signal_name = _signal_name(exitcode)
        self.hint = hint or _crash_hint(exitcode)
        self.in_pool = in_pool
        how = exit_description(exitcode)
        about = f" while running {task}" if task else ""
        after = " Only this task failed; the pool replaced the worker." if in_pool else ""
        super().__init__(f"worker process {pid} {how}{about}. {self.hint}{after}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crash, (self.pid, self.exitcode, self.task, self.hint, self.in_pool))


def _rebuild_crash(
    pid: int | None, exitcode: int | None, task: str | None, hint: str, in_pool: bool
) -> WorkerCrashed:
    return WorkerCrashed(pid, exitcode, task, hint=hint, in_pool=in_pool)


# On 3.10 concurrent.futures has its own TimeoutError; from 3.11 it is the builtin.
_TIMEOUT_BASES: tuple[type[Exception], ...] = tuple(
    dict.fromkeys([TimeoutError, futures.TimeoutError])
)


class TaskTimeout(ConcurError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """A task ran past its time limit and was stopped.

    A process task's worker was killed (SIGTERM, then SIGKILL) and replaced;
    a thread task's thread cannot be stopped and was abandoned.
    """

    def __init__(
        self, task: str, timeout: float, pid: int | None = None, what_happened: str | None = None
    ) -> None:
        self.task = task
        self.timeout = timeout
        self.pid = pid
        self.what_happened = what_happened
        where = what_happened or (
            f"its worker process {pid} was stopped" if pid else "its thread was abandoned"
        )
        super().__init__(
            f"{task} ran longer than its {timeout:g} s limit; {where}. "
            "Raise the timeout, or split the work into smaller tasks."
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.timeout, self.pid, self.what_happened))


class WaitTimeout(ConcurError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """Waiting for a worker's result took longer than the caller allowed.

    Unlike ``TaskTimeout``, nothing was stopped: the worker goes on.
    """


class ThreadNotKillable(ConcurError, TypeError):
    """terminate() or kill() was called on a thread worker."""


class WorkerStateError(ConcurError, ValueError):
    """An attribute of a worker was changed at a time it cannot change."""


# The traceback of an exception raised in a worker process, attached as the
# ``__cause__`` of the exception re-raised in the caller, so the worker's
# frames print under "The above exception was the direct cause". It is the
# very class ProcessPoolExecutor uses, so code that checks for it (even
# ``type(cause) is _RemoteTraceback``) keeps working; ``tb`` holds the text.
RemoteTraceback = _StdRemoteTraceback


def remote_traceback(tb: str) -> RemoteTraceback:
    """The cause to attach for a worker's formatted traceback ``tb``, in the
    form ``ProcessPoolExecutor`` gives it."""
    # (typeshed has the argument as a TracebackType; the stdlib passes text)
    return RemoteTraceback(f'\n"""\n{tb}"""')  # type: ignore[arg-type]


class RemoteError(ConcurError):
    """An exception from a worker whose own class could not be rebuilt here.

    ``type_name``, ``message`` and ``traceback`` keep what the worker knew;
    ``why`` says what stopped the rebuild.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        traceback: str,
        why: str = "its class is not importable here",
    ) -> None:
        super().__init__(
            f"{type_name}: {message} (the worker's exception could not be rebuilt in "
            f"this process: {why})"
        )
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.why = why

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.traceback, self.why))


_HINTS = {
    "SIGKILL": "Killed from outside: out of memory? (check `dmesg` for the OOM killer)",
    "SIGSEGV": "A crash in native code (a C extension or ctypes).",
    "SIGBUS": "A crash in native code (bad memory access).",
    "SIGABRT": "Native code aborted (a failed assertion in a C library?).",
    "SIGTERM": "Something sent it SIGTERM.",
    "SIGFPE": "A crash in native code (arithmetic fault).",
}


def exit_description(exitcode: int | None) -> str:
    """How a process ended, from its exit status: "was killed by SIGKILL",
    "exited with code 3"."""
    name = _signal_name(exitcode)
    return f"was killed by {name}" if name else f"exited with code {exitcode}"


def _signal_name(exitcode: int | None) -> str | None:
    import signal

    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _crash_hint(exitcode: int | None) -> str:
    name = _signal_name(exitcode)
    if name is not None:
        return _HINTS.get(name, "It was killed by a signal.")
    if exitcode is None:
        return "Its exit status is unknown."
    return "The task (or code it called) ended the process, e.g. with os._exit() or sys.exit()."
