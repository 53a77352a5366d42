"""The loop that runs inside a pool's worker process.

    parent ─task pipe─► unpickle ─► fn(*args) ─► pickle ─result pipe─► parent

One task at a time, so the parent always knows which task a worker holds.
Nothing here talks to other workers. A reply says whether the worker is about
to retire (``max_tasks_per_child`` reached, or its RSS above
``max_memory_per_child`` after the task), so the parent sends it no more work
and starts a replacement.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from typing import Any

from . import _supervise, _task
from .errors import SerializationError
from .ps import own_rss

INIT_FAILED = -1


def main(
    tasks: Connection,
    results: Connection,
    lifeline: Connection,
    title: str,
    init_blob: bytes | None,
    limits: tuple[int | None, int | None],
) -> None:
    _supervise.child_setup(lifeline.fileno(), title, pdeathsig=True)
    max_tasks, max_memory = limits
    if init_blob is not None and not _run_initializer(init_blob, results):
        return
    done = 0
    cached: tuple[bytes | None, Any] = (None, None)
    show = _supervise.task_titles(title)
    if show is not None:
        show(None, 0)
    while True:
        try:
            data = tasks.recv_bytes()
        except (EOFError, OSError):
            return
        start_wall, start_cpu = time.perf_counter(), time.thread_time()
        try:
            message = _task.loads(data)
        except Exception as exc:
            _reply(results, -2, (_task.ERR, _unpickle_error(exc)), start_wall, start_cpu, False)
            continue
        if message is None:
            return
        task_id, kind = message[0], message[1]
        if kind == _task.CALL:
            if show is not None:
                show(_task.describe(message[2]), task_id)
            outcome = _call(message[2], message[3], message[4])
        else:
            try:
                if cached[0] != message[2]:
                    cached = (message[2], _task.loads(message[2]))
            except Exception as exc:
                outcome = (_task.ERR, _unpickle_error(exc))
            else:
                if show is not None:
                    show(f"{_task.describe(cached[1])} ×{len(message[3])}", task_id)
                outcomes, _, _ = _task.run_chunk(cached[1], message[3], pack=True)
                outcome = (_task.CHUNK_DONE, outcomes)
        done += 1
        retiring = (max_tasks is not None and done >= max_tasks) or (
            max_memory is not None and own_rss() > max_memory
        )
        _reply(results, task_id, outcome, start_wall, start_cpu, retiring)
        if retiring:
            return
        if show is not None:
            show(None, task_id)


def _call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _task.Outcome:
    try:
        return (_task.OK, fn(*args, **kwargs))
    except BaseException as exc:
        return (_task.ERR, _task.pack_exception(exc))


def _reply(
    results: Connection,
    task_id: int,
    outcome: _task.Outcome,
    start_wall: float,
    start_cpu: float,
    retiring: bool,
) -> None:
    wall, cpu = time.perf_counter() - start_wall, time.thread_time() - start_cpu
    try:
        data = _task.dumps((task_id, outcome, wall, cpu, retiring))
    except Exception as exc:
        what = "result" if outcome[0] == _task.OK else "exception"
        error = SerializationError(
            f"the task's {what} could not be pickled to send it back: "
            f"{type(exc).__name__}: {exc}. Return picklable data.",
            what=what,
        )
        data = _task.dumps((task_id, (_task.ERR, _task.pack_exception(error)), wall, cpu, retiring))
    results.send_bytes(data)


def _unpickle_error(exc: Exception) -> tuple[bytes | None, str, str, str]:
    error = SerializationError(
        f"the worker could not unpickle the task: {type(exc).__name__}: {exc}. "
        "Is the function or an argument's class defined in a module the worker can import?",
        what="task",
    )
    return _task.pack_exception(error)


def _run_initializer(init_blob: bytes, results: Connection) -> bool:
    try:
        _, _, initializer, initargs, kwargs = _task.loads(init_blob)
        initializer(*initargs, **kwargs)
    except BaseException as exc:
        outcome = (_task.ERR, _task.pack_exception(exc))
        results.send_bytes(_task.dumps((INIT_FAILED, outcome, 0.0, 0.0, True)))
        return False
    return True
