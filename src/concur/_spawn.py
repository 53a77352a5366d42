"""One worker as a handle: ``multiprocessing.Process`` and ``threading.Thread``
under one interface, plus the return value neither of them gives you.

    w = concur.spawn(fn, 1, 2, kind="process")   # started at once
    w.join(); w.exitcode                          # as with Process
    w.result()                                    # fn's return value, or its exception re-raised

A process worker sends its outcome back over a pipe that the parent drains
while it waits, so a large result never deadlocks ``join()`` (the classic
``Process`` + ``Queue`` trap). An outcome with large buffers sends them
through shared memory (``_shm``): the child then holds that memory until
the parent, having mapped it, says so on the ``mapped`` pipe. Process workers
are tied to the parent like pool workers: they exit when the parent dies
(see ``_supervise``).

``@concur.process`` and ``@concur.thread`` turn a function into one that
returns a ``Future``, run on a shared pool of that kind.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing.context
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait
from typing import Any, Literal, ParamSpec, TypeVar, overload

from . import _namespace, _pool, _supervise, _task
from .errors import (
    SerializationError,
    ThreadNotKillable,
    WaitTimeout,
    WorkerCrashed,
    WorkerStateError,
)
from .processes import ProcessPool, get_context
from .threads import ThreadPool

P = ParamSpec("P")
R = TypeVar("R")

Kind = Literal["process", "thread"]

_NO_OUTCOME = object()
_thread_numbers = itertools.count(1)


class Worker:
    """A started process or thread running one function call."""

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        kind: Kind,
        name: str | None,
        daemon: bool,
        mp_context: multiprocessing.context.BaseContext | str | None = None,
    ) -> None:
        if kind not in ("process", "thread"):
            raise ValueError(f'kind must be "process" or "thread", not {kind!r}')
        self.kind = kind
        self._outcome: Any = _NO_OUTCOME
        self._reader: Connection | None = None
        self._mapped: Connection | None = None  # closed once a shared result is mapped
        self._keep: tuple[Any, ...] = ()
        self._stopped_by: str | None = None  # "kill()" or "terminate()", once called
        if kind == "process":
            self._start_process(fn, args, kwargs, name, daemon, mp_context)
        else:
            self._start_thread(fn, args, kwargs, name, daemon)

    # -- starting ------------------------------------------------------------

    def _start_process(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        daemon: bool,
        mp_context: multiprocessing.context.BaseContext | str | None,
    ) -> None:
        _supervise.check_not_bootstrapping("A concur.spawn(kind='process') worker")
        payload, self._keep = _task.serialize_call(0, fn, args, kwargs)  # _keep: its
        # shared memory, until the child is done
        ctx = get_context(mp_context)
        reader, writer = ctx.Pipe(duplex=False)
        mapped_r, mapped_w = ctx.Pipe(duplex=False)
        lifeline = Connection(os.dup(_supervise.lifeline_fd()), writable=False)
        # PR_SET_PDEATHSIG follows the starting thread: only the main thread
        # is sure to live as long as this process.
        pdeathsig = threading.current_thread() is threading.main_thread()
        title = f"concur-spawn {name or _task.describe(fn)}"
        process = ctx.Process(  # type: ignore[attr-defined]
            target=_process_main,
            args=(payload, writer, (mapped_r, mapped_w), lifeline, title, pdeathsig),
            name=name,
            daemon=daemon,
        )
        try:
            with _supervise.starting_without_main():
                process.start()
        finally:
            writer.close()
            mapped_r.close()
            lifeline.close()
        self._process = process
        self._reader = reader
        self._mapped = mapped_w

    def _start_thread(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        daemon: bool,
    ) -> None:
        def target() -> None:
            try:
                self._outcome = (_task.OK, fn(*args, **kwargs))
            except BaseException as exc:
                self._outcome = (_task.RAISED, exc)

        if name is None:
            name = f"Thread-{next(_thread_numbers)} ({getattr(fn, '__name__', 'fn')})"
        self._thread = threading.Thread(target=target, name=name, daemon=daemon)
        self._thread.start()

    # -- facts ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._process.name if self.kind == "process" else self._thread.name

    @property
    def pid(self) -> int | None:
        """The process id; a thread reports its process's pid (threads share it)."""
        return self._process.pid if self.kind == "process" else os.getpid()

    @property
    def ident(self) -> int | None:
        """The pid of a process, the thread identifier of a thread."""
        return self._process.ident if self.kind == "process" else self._thread.ident

    @property
    def native_id(self) -> int | None:
        return self._process.pid if self.kind == "process" else self._thread.native_id

    @property
    def daemon(self) -> bool:
        return self._process.daemon if self.kind == "process" else self._thread.daemon

    @daemon.setter
    def daemon(self, value: bool) -> None:
        raise WorkerStateError(
            "the daemon flag cannot change once a worker has started; "
            "pass daemon=... to concur.spawn() instead"
        )

    @property
    def exitcode(self) -> int | None:
        """None while running; for a process its exit status (negative: a
        signal), for a thread 0 when the function returned and 1 when it raised."""
        if self.kind == "process":
            self._drain(0)
            code: int | None = self._process.exitcode
            return code
        if self._thread.is_alive() or self._outcome is _NO_OUTCOME:
            return None
        return 0 if self._outcome[0] == _task.OK else 1

    def is_alive(self) -> bool:
        if self.kind == "process":
            self._drain(0)
            return bool(self._process.is_alive())
        return self._thread.is_alive()

    # -- waiting ---------------------------------------------------------------

    def join(self, timeout: float | None = None) -> None:
        """Wait until the worker ends, or ``timeout`` seconds pass."""
        timeout = _pool.check_timeout(timeout)
        if self.kind == "thread":
            self._thread.join(timeout)
            return
        self._drain(timeout)

    def _drain(self, timeout: float | None) -> None:
        """Read the outcome if it arrives within ``timeout``, then wait for the exit."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._reader is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([self._reader, self._process.sentinel], left)
            if not ready:
                return
            if self._reader in ready:
                try:
                    self._outcome = _opened_outcome(self._reader.recv_bytes())
                except (EOFError, OSError):
                    pass
                self._reader.close()
                self._reader = None
                self._let_go()
            elif self._process.sentinel in ready and not self._reader.poll(0):
                self._reader.close()
                self._reader = None
                self._let_go()
        self._keep = ()  # the child has mapped its arguments, or is gone
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._process.join(left)

    def _let_go(self) -> None:
        """Tell the child its result is mapped (or no longer wanted): it may exit.

        Said in a message, not only by closing the pipe: under fork, other
        children may hold a copy of this end, and an end of file would wait
        for them."""
        if self._mapped is not None:
            with contextlib.suppress(OSError):
                self._mapped.send_bytes(b"mapped")
            self._mapped.close()
            self._mapped = None

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value, or its exception re-raised here.

        Raises ``WaitTimeout`` (a ``TimeoutError``) if the worker is still running after
        ``timeout`` seconds, and ``WorkerCrashed`` if a process worker died
        without an answer (killed, or it called ``os._exit``).
        """
        self.join(timeout)
        if self.is_alive():
            raise WaitTimeout(
                f"{self.name} is still running after {timeout} s; it goes on "
                "(kill() stops a process worker)"
            )
        if self._outcome is _NO_OUTCOME:
            if self.exitcode == _supervise.MAIN_GUARD_EXIT:
                raise _supervise.main_guard_error("concur.spawn(kind='process')")
            hint = None
            if self._stopped_by is not None:
                hint = f"You stopped it with {self._stopped_by}."
            raise WorkerCrashed(self.pid, self.exitcode, hint=hint, in_pool=False)
        return _task.resolve(self._outcome)

    # -- stopping --------------------------------------------------------------

    def terminate(self) -> None:
        """Send SIGTERM to a process worker (threads cannot be stopped)."""
        self._only_process("terminate")
        self._stopped_by = self._stopped_by or "terminate()"
        self._process.terminate()

    def kill(self) -> None:
        """Send SIGKILL to a process worker (threads cannot be stopped)."""
        self._only_process("kill")
        self._stopped_by = "kill()"
        self._process.kill()

    def _only_process(self, action: str) -> None:
        if self.kind == "thread":
            raise ThreadNotKillable(
                f"cannot {action} thread {self.name!r}: Python has no way to stop a thread "
                "from outside (it may hold locks that would never be released). Use "
                "kind='process' for work you may need to stop, or have the function check "
                "a threading.Event and return."
            )

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else f"exitcode={self.exitcode}"
        return f"<concur.Worker {self.kind} {self.name!r} pid={self.pid} {state}>"


def _process_main(
    payload: bytes,
    writer: Connection,
    mapped_ends: tuple[Connection, Connection],
    lifeline: Connection,
    title: str,
    pdeathsig: bool,
) -> None:
    mapped, theirs = mapped_ends
    theirs.close()  # the parent's end (inherited under fork): EOF means it is gone
    _supervise.child_setup(lifeline.fileno(), title, pdeathsig, short="concur-spawn")
    data, shared, keep = _packed_outcome(_call(payload))
    writer.send_bytes(data)
    if shared:
        # The parent maps the result's memory from this process: hold it
        # until the parent says so (closes its end) or is gone.
        with contextlib.suppress(EOFError, OSError):
            mapped.recv_bytes()
    del keep


def _call(payload: bytes) -> _task.Outcome:
    try:
        _, _, fn_blob, body, buffers = _task.open_message(payload)
        fn, args, kwargs = _namespace.load_call(fn_blob, body, buffers)
        return (_task.OK, fn(*args, **kwargs))
    except BaseException as exc:
        return (_task.ERR, _task.pack_exception(exc))


def _packed_outcome(outcome: _task.Outcome) -> tuple[bytes, bool, Sequence[Any]]:
    """The outcome as the message to send (one flag byte, then ``_task.pack``'s
    body), whether its large buffers are in shared memory, and the segments
    to hold until the parent mapped them."""
    try:
        body, shared, keep = _task.pack(outcome)
    except Exception as exc:
        error = SerializationError(
            f"the worker's result could not be pickled: {type(exc).__name__}: {exc}",
            what="result",
        )
        body, shared, keep = _task.dumps((_task.ERR, _task.pack_exception(error))), False, ()
    return (_SHARED if shared else _INLINE) + body, shared, keep


_INLINE, _SHARED = b"\0", b"\1"


def _opened_outcome(data: bytes) -> Any:
    """The child's outcome, its shared buffers mapped (copy-on-write)."""
    body = memoryview(data)[1:]
    if data[:1] != _SHARED:
        return _task.loads(body)
    try:
        body, buffers = _task.unpack(body, writable=True)
    except SerializationError as exc:
        return (_task.RAISED, exc)
    return _task.loads(body, buffers=buffers)


def spawn(
    fn: Callable[..., Any],
    *args: Any,
    kind: Kind = "process",
    name: str | None = None,
    daemon: bool = False,
    mp_context: multiprocessing.context.BaseContext | str | None = None,
    **kwargs: Any,
) -> Worker:
    """Start ``fn(*args, **kwargs)`` in a new process or thread; return its handle.

    ``daemon=True`` ends the worker when the main program ends; a
    ``daemon=False`` worker is waited for at exit, as ``Process`` and
    ``Thread`` do. ``mp_context`` picks a process's start method (default:
    concur's, see ``docs/start-methods.md``).
    """
    return Worker(fn, args, kwargs, kind=kind, name=name, daemon=daemon, mp_context=mp_context)


_shared: dict[str, Any] = {}
_shared_lock = threading.Lock()


def _shared_pool(kind: Kind) -> ThreadPool | ProcessPool:
    with _shared_lock:
        pool = _shared.get(kind)
        if pool is None:
            pool = ProcessPool() if kind == "process" else ThreadPool()
            _shared[kind] = pool
        return pool


def _decorate(kind: Kind, fn: Callable[P, R] | None, pool: ThreadPool | ProcessPool | None) -> Any:
    def decorate(func: Callable[P, R]) -> Callable[P, Future[R]]:
        @functools.wraps(func)
        def submit(*args: P.args, **kwargs: P.kwargs) -> Future[R]:
            return (pool or _shared_pool(kind)).submit(func, *args, **kwargs)

        return submit

    return decorate if fn is None else decorate(fn)


@overload
def process(fn: Callable[P, R], *, pool: ProcessPool | None = None) -> Callable[P, Future[R]]: ...
@overload
def process(
    fn: None = None, *, pool: ProcessPool | None = None
) -> Callable[[Callable[P, R]], Callable[P, Future[R]]]: ...
def process(fn: Callable[P, R] | None = None, *, pool: ProcessPool | None = None) -> Any:
    """Decorator: calling the function runs it in a worker process; returns a Future.

    Runs on ``pool`` if given, else on a shared ProcessPool started on first use.
    """
    return _decorate("process", fn, pool)


@overload
def thread(fn: Callable[P, R], *, pool: ThreadPool | None = None) -> Callable[P, Future[R]]: ...
@overload
def thread(
    fn: None = None, *, pool: ThreadPool | None = None
) -> Callable[[Callable[P, R]], Callable[P, Future[R]]]: ...
def thread(fn: Callable[P, R] | None = None, *, pool: ThreadPool | None = None) -> Any:
    """Decorator: calling the function runs it in a worker thread; returns a Future."""
    return _decorate("thread", fn, pool)
