"""The parent's handle on one pool worker process: start, watch, signal, reap.

A worker's death is watched through a pidfd (Linux 5.3+), not through the
process sentinel: the sentinel is a pipe the worker holds, and under fork
and spawn a grandchild the task forked inherits it and would hide the
worker's death. Where pidfds are missing, the sentinel is the fallback.

Signals go to the worker's process group (the worker leads one, see
``_supervise.child_setup``), so what a task started stops with it. The
group is signalled before the worker is reaped, while its id cannot have
been reused.
"""

from __future__ import annotations

import contextlib
import multiprocessing.context
import os
import select
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from . import _safepath, _sigmask, _stats, _supervise, _wire, _worker


class WorkerProcess:
    """One worker: its process, pipes, and what the pool knows of it.

    ``task`` is the task it holds (None when idle); ``ready`` turns True
    when it reported its set-up and initializer done; ``retiring`` when it
    said it will exit after its reply; ``stopping`` once the pool kills it;
    ``kill_at`` is when a SIGTERM becomes a SIGKILL (or when a worker whose
    initializer failed is killed if it has not exited); ``failure`` is the
    error its initializer's failure breaks the pool with once it is gone;
    ``stop_hint`` why concur killed it, for its task's ``WorkerCrashed``.
    ``reader`` is held by whoever reads ``rx`` (see ``_replies``);
    ``watched`` while the supervisor polls its pipes. ``record`` is its
    line in the pool's ``stats()``.
    """

    __slots__ = (
        "exit_fd",
        "failure",
        "kill_at",
        "name",
        "pid",
        "pidfd",
        "poller",
        "process",
        "reader",
        "ready",
        "record",
        "retiring",
        "rx",
        "rx_fd",
        "stop_hint",
        "stopping",
        "task",
        "task_started",
        "tasks_done",
        "tx",
        "tx_fd",
        "watched",
    )

    def __init__(self, process: Any, tx: Connection, rx: Connection, name: str) -> None:
        self.process = process
        self.pid: int = process.pid
        self.pidfd = _pidfd(self.pid)
        self.exit_fd: int = self.pidfd if self.pidfd is not None else process.sentinel
        self.tx = tx
        self.rx = rx
        # The pipes' descriptors, for _wire; -1 once closed, so a late
        # write fails (EBADF) rather than reaching a reused descriptor.
        self.tx_fd = tx.fileno()
        self.rx_fd = rx.fileno()
        # What a caller reading its own reply waits on: a reply, or the exit.
        self.poller = select.poll()
        self.poller.register(self.rx_fd, select.POLLIN)
        self.poller.register(self.exit_fd, select.POLLIN)
        self.name = name
        self.task: Any = None
        self.task_started = 0.0
        self.tasks_done = 0
        self.ready = False
        self.retiring = False
        self.stopping = False
        self.kill_at: float | None = None
        self.failure: BaseException | None = None
        self.stop_hint: str | None = None  # why concur killed it, for the task it held
        self.reader = threading.RLock()  # an RLock: only its holder can release it
        self.watched = False
        self.record = _stats.WorkerRecord(name, self.pid, self.pid, time.monotonic())

    @property
    def state(self) -> str:
        if self.retiring or self.stopping:
            return "exiting"
        if not self.ready:
            return "starting"
        return "idle" if self.task is None else "busy"

    def signal(self, sig: int) -> None:
        """Signal the worker and everything in its process group.

        The pool reaps a worker only after its exit was seen, so its pid
        (and group id) still names it here.
        """
        _supervise.kill_group(self.pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def exited(self, timeout: float = 0.0) -> bool:
        ready, _, _ = select.select([self.exit_fd], [], [], timeout)
        return bool(ready)

    def reap(self) -> int | None:
        """After its exit: stop what is left of its group, collect its status."""
        _supervise.kill_group(self.pid, signal.SIGKILL)
        self.process.join()
        code: int | None = self.process.exitcode
        self.close()
        return code

    def close(self) -> None:
        self.tx_fd = self.rx_fd = -1
        self.tx.close()
        self.rx.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        with contextlib.suppress(ValueError):
            self.process.close()


def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except OSError:
        return None


def start(
    ctx: multiprocessing.context.BaseContext,
    name: str,
    settings: _worker.Settings,
    initializer: _worker.Initializer | None,
) -> WorkerProcess:
    """Start one worker process; raises OSError when the system cannot."""
    task_r, task_w = ctx.Pipe(duplex=False)
    result_r, result_w = ctx.Pipe(duplex=False)
    lifeline = Connection(os.dup(_supervise.lifeline_fd()), writable=False)
    process = ctx.Process(  # type: ignore[attr-defined]
        target=_worker.main,
        args=(task_r, result_w, lifeline, settings, initializer),
        name=name,
    )
    try:
        with _sigmask.for_children():
            _start_helpers(ctx)
            with _supervise.starting_without_main():
                process.start()
    except BaseException:
        task_w.close()
        result_r.close()
        raise
    finally:
        # The child has its copies; ours would hide its death from us.
        task_r.close()
        result_w.close()
        lifeline.close()
    return WorkerProcess(process, task_w, result_r, name)


def _start_helpers(ctx: multiprocessing.context.BaseContext) -> None:
    """The resource tracker and the fork server, started without the working
    directory on their ``sys.path`` (``_safepath``), with the mask this
    thread had: the resource tracker unblocks SIGINT and SIGTERM in the
    thread that starts it."""
    method = ctx.get_start_method()
    if method == "fork":
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        _safepath.start_resource_tracker()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if method == "forkserver":
        # Started here rather than by process.start(), so that it starts safely.
        _safepath.start_forkserver()


def stop_all(workers: list[WorkerProcess], exit_message: bytes, grace: float) -> list[int | None]:
    """Ask idle workers to exit, kill the rest, and reap them all; their exit codes.

    A worker already being stopped (its task timed out or was cancelled)
    gets SIGKILL at once: its task has failed, and waiting out its grace
    would only delay the shutdown.
    """
    for worker in workers:
        if worker.stopping:
            worker.signal(signal.SIGKILL)
            continue
        with contextlib.suppress(OSError):
            _wire.send(worker.tx_fd, exit_message)
    deadline = time.monotonic() + grace
    codes = []
    for worker in workers:
        if not worker.exited(max(0.0, deadline - time.monotonic())):
            worker.signal(signal.SIGTERM)
            if not worker.exited(0.5):
                worker.signal(signal.SIGKILL)
                worker.exited(5.0)
        codes.append(worker.reap())
    return codes
