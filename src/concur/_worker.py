"""The loop that runs inside a pool's worker process.

    parent ─task pipe─► unpickle ─► fn(*args) ─► pickle ─result pipe─► parent

One task at a time, so the parent always knows which task a worker holds.
Nothing here talks to other workers. The worker first says READY (its set-up
and initializer are done; a death before that is the start's fault, not a
task's), then answers each task with a DONE message whose header names the
task and says whether the worker is about to retire (``max_tasks_per_child``
items run, or its RSS above ``max_memory_per_child`` after the task), so the
parent sends it no more work and starts a replacement. Log records go up
the same pipe (``_logs``), under a lock, since any thread may log.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from . import _cputime, _logs, _namespace, _proc, _safepath, _shm, _supervise, _task, _wire
from .errors import SerializationError
from .ps import own_rss

# Loaded in the fork server before it forks any worker: what concur set
# only to start the server is not handed on to the workers.
_safepath.forget()


@dataclass(frozen=True)
class Settings:
    """What a worker is told when it starts (besides its pipes)."""

    title: str
    max_tasks: int | None
    max_memory: int | None
    log_levels: _logs.Levels | None  # None: leave logging alone
    cpu_budget: int | None = None  # CPUs for work the tasks start themselves (nested pools)


class Initializer:
    """The pool's initializer and its arguments, handed to each new worker.

    It travels as an argument of the worker process, so multiprocessing
    objects in ``initargs`` (queues, locks, ``Value``, manager proxies) are
    passed the way ``ProcessPoolExecutor`` passes them: by inheritance under
    fork, or pickled by multiprocessing while the process starts, the one
    moment they may be. The callable, and arguments that allow it, go by
    value like a task's (lambdas, ``__main__`` functions).
    """

    def __init__(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        """Raises SerializationError now for what could never reach a worker."""
        self.fn = fn
        self.args = args
        _task.serialize_callable(fn)
        # Outside a process start, multiprocessing refuses to pickle its own
        # objects: that tells which arguments must go its way. (During a
        # start they would pickle, but plain pickle would copy raw fds.)
        self.inherit = False
        try:
            _task.dumps(args)
        except Exception as exc:
            if not _task.inherited_only(exc):
                raise _task.explain(exc, "initargs", args) from exc
            self.inherit = True

    def __reduce__(self) -> tuple[Any, ...]:
        args: Any = self.args if self.inherit else _task.dumps(self.args)
        return (_load_initializer, (_task.dumps(self.fn), args))

    def __call__(self) -> None:
        self.fn(*self.args)


def _load_initializer(fn_blob: bytes, args: Any) -> Initializer:
    loaded = object.__new__(Initializer)
    loaded.fn = _namespace.loads(fn_blob)
    loaded.args = _namespace.loads(args) if isinstance(args, bytes) else args
    loaded.inherit = False
    return loaded


class _Replies:
    """The reply pipe, shared by the task loop and log records from any thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn  # kept open for as long as the worker runs
        self.fd = conn.fileno()
        self.lock = threading.Lock()

    def send(
        self,
        kind: int,
        task_id: int = 0,
        body: bytes = b"",
        wall: float = 0.0,
        cpu: float = 0.0,
        retiring: bool = False,
        shared: bool = False,
    ) -> None:
        flags = (_task.RETIRING if retiring else 0) | (_task.SHARED if shared else 0)
        head = _task.REPLY_HEAD.pack(kind, flags, task_id, wall, cpu)
        with self.lock:
            _wire.send(self.fd, head, body)

    def log(self, body: bytes) -> None:
        self.send(_task.LOG, body=body)


def main(
    tasks: Connection,
    results: Connection,
    lifeline: Connection,
    settings: Settings,
    initializer: Initializer | None,
) -> None:
    _supervise.child_setup(lifeline.fileno(), settings.title, pdeathsig=True, own_group=True)
    if settings.cpu_budget is not None:
        _proc.set_cpu_budget(settings.cpu_budget)
    replies = _Replies(results)
    if settings.log_levels is not None:
        _logs.install(replies.log, settings.log_levels)
    if initializer is not None:
        try:
            initializer()
        except BaseException as exc:
            # What ProcessPoolExecutor's worker logs, where it logs it; with
            # logging forwarded, the record reaches the parent's handlers.
            logging.getLogger("concurrent.futures").critical(
                "Exception in initializer:", exc_info=exc
            )
            outcome = (_task.ERR, _task.pack_exception(exc))
            replies.send(_task.INIT_FAILED, body=_task.dumps(outcome))
            return
    replies.send(_task.READY)
    _serve(tasks, replies, settings)


def _serve(tasks: Connection, replies: _Replies, settings: Settings) -> None:
    done = 0
    cached: tuple[bytes | None, Any] = (None, None)
    held: list[Any] = []  # the last reply's shared memory, until the parent mapped it
    mappings = _shm.worker_mappings  # the arguments' shared memory, reused by the next task
    show = _supervise.task_titles(settings.title)
    if show is not None:
        show(None, 0)
    fd = tasks.fileno()
    while True:
        try:
            data = _wire.recv(fd)
        except (EOFError, OSError):
            return
        if held:
            held.clear()
        if mappings.current:
            mappings.next_task()
        kind, task_id, fn_blob, body, buffers = _opened(data)
        if kind == _task.EXIT:
            return
        if kind == _task.RELEASE:
            mappings.release()
            continue
        outcome, items, cached, start = _run(kind, task_id, fn_blob, body, buffers, cached, show)
        if mappings.previous:
            mappings.done_with_previous()
        del data, fn_blob, body, buffers
        done += items
        retiring = (settings.max_tasks is not None and done >= settings.max_tasks) or (
            settings.max_memory is not None and own_rss() > settings.max_memory
        )
        reply, shared, keep = _pack_outcome(outcome)
        if keep:
            held.extend(keep)
        del outcome, keep
        wall, cpu = _cputime.spent(start)
        replies.send(
            _task.DONE, task_id, reply, wall=wall, cpu=cpu, retiring=retiring, shared=shared
        )
        if retiring:
            if shared:  # the parent maps the reply, then says RELEASE
                with contextlib.suppress(EOFError, OSError):
                    _wire.recv(fd)
            return
        if show is not None:
            show(None, task_id)


def _opened(
    data: bytes | bytearray,
) -> tuple[int, int, memoryview, memoryview, list[memoryview] | BaseException | None]:
    """``open_message``, with a failure to map the shared memory kept as the
    task's error."""
    try:
        return _task.open_message(data)
    except SerializationError as exc:
        kind, _, task_id = _task.TASK_HEAD.unpack_from(data)
        return kind, task_id, memoryview(b""), memoryview(b""), exc


def _run(
    kind: int,
    task_id: int,
    fn_blob: memoryview,
    body: memoryview,
    buffers: list[memoryview] | BaseException | None,
    cached: tuple[bytes | None, Any],
    show: Callable[[str | None, int], None] | None,
) -> tuple[_task.Outcome, int, tuple[bytes | None, Any], _cputime.Clock]:
    """Run one CALL or CHUNK: (outcome, items run, the chunk function cache,
    the clock at the start of the call).

    The clock starts once the message is unpickled: the first load of a
    function imports its module, a cost (and disk waits) of the worker's
    start, not of the items auto measures by it.
    """
    try:
        if isinstance(buffers, BaseException):
            raise buffers
        message: Any = (
            _namespace.load_call(fn_blob, body, buffers)
            if kind == _task.CALL
            else _namespace.loads(body, buffers)
        )
        if kind == _task.CHUNK:
            blob = fn_blob.tobytes()
            if cached[0] != blob:
                cached = (blob, _namespace.loads(blob))
    except BaseException as exc:
        return (_task.ERR, _unpickle_error(exc)), 1, cached, _cputime.clock()
    start = _cputime.clock()
    if kind == _task.CALL:
        fn, args, kwargs = message
        if show is not None:
            show(_task.describe(fn), task_id)
        return _call(fn, args, kwargs), 1, cached, start
    items = message
    if show is not None:
        show(f"{_task.describe(cached[1])} ×{len(items)}", task_id)
    outcomes, _, _ = _task.run_chunk(cached[1], items, pack=True)
    return (_task.CHUNK_DONE, outcomes), len(items), cached, start


def _call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _task.Outcome:
    try:
        return (_task.OK, fn(*args, **kwargs))
    except BaseException as exc:
        return (_task.ERR, _task.pack_exception(exc))


def _pack_outcome(outcome: _task.Outcome) -> tuple[bytes, bool, Sequence[Any]]:
    """The outcome packed (``_task.pack``); one that cannot be becomes an
    error for the task.

    An ``Exception`` while pickling becomes a SerializationError (so does a
    result too large for the memory left); anything else (``SystemExit``
    from a ``__reduce__``) is sent back as it is, as ``ProcessPoolExecutor``
    does, rather than ending the worker.
    """
    try:
        return _task.pack(outcome)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            return _task.dumps((_task.ERR, _task.pack_exception(exc))), False, ()
        what = "result" if outcome[0] != _task.ERR else "exception"
        error = SerializationError(
            f"the task's {what} could not be pickled to send it back: "
            f"{type(exc).__name__}: {_task.safe_str(exc)}. Return picklable data.",
            what=what,
        )
        return _task.dumps((_task.ERR, _task.pack_exception(error))), False, ()


def _unpickle_error(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    if isinstance(exc, SerializationError):  # shared memory that is gone: says so itself
        return _task.pack_exception(exc)
    error = SerializationError(
        f"the worker could not unpickle the task: {type(exc).__name__}: {_task.safe_str(exc)}. "
        "Is the function or an argument's class defined in a module the worker can import?",
        what="task",
    )
    return _task.pack_exception(error)
