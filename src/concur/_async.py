"""The async front: ``concur.arun``/``amap`` and ``pool.arun``/``amap``, on
asyncio and trio alike (through anyio, the ``concur[async]`` extra).

The pools' own futures, awaited: a done-callback hands the wake-up to the
loop's thread (``_Waker``), so no thread waits per call. ``pool.arun``
awaits the future ``submit`` returns; ``amap`` (and ``concur.arun``, a
one-item ``concur.amap``) drives the streaming engine (``_stream.Stream``)
as ``imap`` does, except that instead of blocking in
``concurrent.futures.wait`` the loop awaits the futures the next result
depends on (``Stream.prepare``). A step that may run work in the caller's
thread (auto's probe, an inline chunk) runs in a worker thread instead, so
the loop is never blocked.

Cancelling the awaiting task (``task.cancel()``, ``asyncio.timeout``, a trio
or anyio cancel scope), or Ctrl-C, cancels what it awaited: the future, or
the stream closed as Ctrl-C closes ``imap``. A process pool's
``Future.cancel()`` kills the worker that runs the task, so its slot is free
again. A thread cannot be stopped: its task runs to its end and its result
is dropped.
"""

from __future__ import annotations

import functools
import importlib
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

try:
    import anyio
    import anyio.lowlevel
    import anyio.to_thread
except ImportError as error:  # tests/test_async.py hides anyio to check this
    raise ImportError("concur's async functions need anyio: pip install 'concur[async]'") from error

if TYPE_CHECKING:
    from ._progress import Bar
    from ._stream import Stream
    from .api import Backend

R = TypeVar("R")


class _Waker:
    """Wakes one event loop when any future it was shown finishes.

    Each future gets one done-callback, however often it is waited for; the
    callback runs in whatever thread settles the future and only schedules
    ``Event.set`` on the loop's own thread (anyio's ``run_sync_soon``, what
    its blocking portal uses), so it never waits for the loop.
    """

    def __init__(self) -> None:
        self._token = anyio.lowlevel.current_token()
        self._event = anyio.Event()
        self._hooked: weakref.WeakSet[Future[Any]] = weakref.WeakSet()

    async def wait(self, futures: list[Future[Any]]) -> None:
        """Return once one of ``futures`` is done (or perhaps a moment early:
        the caller checks again)."""
        self._event = anyio.Event()
        for future in futures:
            if future not in self._hooked:
                self._hooked.add(future)
                future.add_done_callback(self._wake)
        if not any(future.done() for future in futures):
            await self._event.wait()

    def _wake(self, _future: Future[Any]) -> None:
        token = self._token
        try:
            token.backend_class.run_sync_soon(self._set, (), token.native_token)
        except anyio.RunFinishedError:
            pass  # the loop has ended: nobody waits any more

    def _set(self) -> None:
        self._event.set()


class AsyncResults(AsyncIterator[Any]):
    """What ``amap`` returns: ``async for result in ...``, in input order or
    as results finish. Leaving early (``aclose()``, ``async with``)
    cancels what has not started, as leaving ``imap`` does; cancelling the
    task that iterates stops what runs too."""

    def __init__(self, stream: Stream, bar: Bar | None = None) -> None:
        self._stream = stream
        self._waker: _Waker | None = None
        self._bar = bar  # drawn from the first result asked for to the last

    @property
    def decision(self) -> Any:
        """Where the work runs now, for ``concur.amap`` (None on a fixed pool)."""
        return getattr(self._stream, "decision", None)

    def __aiter__(self) -> AsyncResults:
        return self

    async def __anext__(self) -> Any:
        stream = self._stream
        if self._waker is None:
            self._waker = _Waker()
            if self._bar is not None:
                self._bar.start()
        try:
            while True:
                if stream.placement.runs_here():
                    futures = await anyio.to_thread.run_sync(stream.prepare)
                else:
                    futures = stream.prepare()
                if not futures:
                    break
                await self._waker.wait(futures)
        except BaseException:
            # Cancelled, Ctrl-C (trio raises it in the task), or the stream
            # failed: what is in flight is abandoned, so it is stopped.
            await self._close(abort=True)
            raise
        try:
            value = next(stream)  # ready: this does not wait
        except StopIteration:
            self._end_bar()
            raise StopAsyncIteration from None
        except BaseException:  # a failed item: the stream has closed itself
            self._end_bar()
            raise
        if self._bar is not None:
            self._bar.advance()
        return value

    def _end_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    async def aclose(self) -> None:
        """Stop: cancel what has not started; what runs finishes."""
        await self._close(abort=False)

    async def _close(self, abort: bool) -> None:
        # Closing may stop or park the run's pools, which joins their
        # threads and processes: a worker thread waits for that, not the loop.
        # Shielded: a cancelled task still finishes closing.
        self._end_bar()
        close = functools.partial(self._stream.close, abort=abort)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close)

    async def __aenter__(self) -> AsyncResults:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def outcome(future: Future[R]) -> R:
    """The result of a pool's future, awaited on the event loop. Cancelled,
    it cancels the future: a process pool kills the worker running it."""
    waker = _Waker()
    try:
        while not future.done():
            await waker.wait([future])
    except BaseException:  # cancelled, or Ctrl-C: nobody waits for the call any more
        future.cancel()
        raise
    return future.result()


async def first(results: AsyncResults) -> Any:
    """The one result of a one-item ``amap``; the stream is closed after it."""
    async with results:
        async for value in results:
            return value
    raise AssertionError("a one-item stream yielded nothing")  # pragma: no cover


def star(fn: Callable[..., R], kwargs: dict[str, Any], args: tuple[Any, ...]) -> R:
    """``fn(*args, **kwargs)``: one call as the one item of a stream."""
    return fn(*args, **kwargs)


def one_call(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[..., Any]:
    """``fn`` with ``kwargs``, taking one item: the tuple of its positional
    arguments; named as ``fn`` is, for errors and ``concur ps``."""
    call = functools.partial(star, fn, kwargs)
    for name in ("__module__", "__qualname__"):
        value = getattr(fn, name, None)
        if isinstance(value, str):
            setattr(call, name, value)
    return call


# -- concur.arun / concur.amap ----------------------------------------------------


async def arun(
    fn: Callable[..., R],
    *args: Any,
    backend: Backend = "auto",
    timeout: float | None = None,
    **kwargs: Any,
) -> R:
    """``await concur.arun(fn, *args, **kwargs)``: ``concur.run``'s async twin.

    ``"auto"`` runs the call on a thread, or, with a ``timeout``, in a
    process (only a process can be stopped); ``CONCUR_BACKEND`` overrides
    it. ``"inline"`` runs it in the event loop's thread. A process past
    ``timeout`` is killed (``TaskTimeout``). Cancelling the awaiting task
    kills the process that runs the call; a thread runs on to its end and
    its result is dropped.
    """
    await _load_engine()
    chosen = _arun_backend(backend, timeout)
    if chosen == "inline":
        return fn(*args, **kwargs)
    results = amap(one_call(fn, kwargs), [args], backend=chosen, workers=1, timeout=timeout)
    value: R = await first(results)
    return value


# What concur.amap builds on: about 0.1 s of imports the first time, on a
# worker thread when the caller can await it (arun), not the loop's.
_ENGINE = ("concur._pool", "concur._progress", "concur._stream", "concur.api", "concur.auto")


async def _load_engine() -> None:
    if not all(name in sys.modules for name in _ENGINE):
        await anyio.to_thread.run_sync(_import_engine)


def _import_engine() -> None:
    for name in _ENGINE:
        importlib.import_module(name)


def amap(
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    backend: Backend = "auto",
    workers: int | None = None,
    ordered: bool = True,
    return_exceptions: bool = False,
    timeout: float | None = None,
    progress: bool = False,
) -> AsyncResults:
    """``async for result in concur.amap(fn, items)``: ``concur.imap``'s async twin.

    Input is read as results are taken, with a bounded number of chunks in
    flight, so an endless iterable is fine. ``ordered=False`` yields results
    as they finish; ``return_exceptions=True`` yields a failed item's
    exception instead of raising it. ``timeout`` is each item's time limit
    (a process past it is killed: ``TaskTimeout``). ``progress=True`` draws
    ``concur.imap``'s bar.
    """
    from ._pool import TaskOptions, check_timeout
    from ._progress import Bar
    from ._stream import length_hint
    from .api import check_backend
    from .auto import AutoMap

    forced = check_backend(_refuse_dask(backend), workers)
    stream = AutoMap(
        fn,
        iterables,
        ordered=ordered,
        return_exceptions=return_exceptions,
        workers=workers,
        forced_backend=forced,
        options=TaskOptions(check_timeout(timeout)),
    )
    return AsyncResults(stream, Bar(length_hint(iterables), stream.where) if progress else None)


def _refuse_dask(backend: str) -> str:
    """``backend``, unless it is (or ``CONCUR_BACKEND`` makes it) dask."""
    from .auto import environment_override

    if backend == "dask" or (backend == "auto" and environment_override() == "dask"):
        raise ValueError(
            "concur.arun/amap do not start a Dask cluster (that would block the event "
            "loop); start a concur.DaskPool and use pool.arun / pool.amap on it"
        )
    return backend


def _arun_backend(backend: Backend, timeout: float | None) -> Backend:
    """Where ``arun`` runs: auto is a thread, or a process when a timeout is given."""
    from ._pool import check_timeout
    from .api import check_backend
    from .auto import environment_override

    check_backend(_refuse_dask(backend), None)
    check_timeout(timeout)
    if backend != "auto":
        return backend
    chosen = environment_override() or ("process" if timeout is not None else "thread")
    return chosen  # type: ignore[return-value]
