"""One-shot helpers: run a function over data, or once, without managing a pool.

Each call starts the workers it needs or takes over idle ones an earlier
call left warm; when it ends cleanly, its pools stay warm for
``CONCUR_KEEP_WARM`` seconds (default 10, 0 for none) and then stop, so
nothing is left running for long (docs/auto.md, "Warm pools"). A call that
fails or is interrupted stops its workers. ``backend`` chooses where the
work runs:

``"auto"`` (the default)
    concur measures the first items and picks one of the others, with the
    number of workers and the chunk size, and re-decides if the work changes
    (see ``concur.auto`` and docs/auto.md). ``CONCUR_BACKEND`` in the
    environment overrides the choice.
``"process"``
    worker processes, one per CPU: for work that computes in Python;
``"thread"``
    worker threads: for work that waits (network, disk, sleeps, or C code
    that releases the GIL);
``"inline"``
    in the calling thread, one item after another: for debugging, and for
    work too small to be worth sending anywhere;
``"dask"``
    a Dask distributed cluster (``concur.DaskPool``): the one at
    ``DASK_SCHEDULER_ADDRESS``, or a local one started for the call.

Whatever runs it, the result says how: ``concur.map`` returns a list with a
``decision`` attribute, and ``concur.imap`` an iterator with one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._backends import BACKENDS
from ._pool import check_timeout
from ._progress import track
from ._stream import length_hint
from ._task import describe
from .auto import AutoMap, Decision, environment_override
from .errors import TaskTimeout, WaitTimeout

if TYPE_CHECKING:
    from .dask_pool import DaskPool

R = TypeVar("R")

# The same names as _backends.BACKENDS, spelled out for type checkers
# (tests/test_api.py checks that they agree).
Backend = Literal["auto", "inline", "thread", "process", "dask"]
DEFAULT_BACKEND: Backend = "auto"

log = logging.getLogger("concur.auto")


class Results(list[Any]):
    """The list ``concur.map`` returns, with the ``decision`` that produced it."""

    decision: Decision | None = None


def _where(backend: str) -> str:
    """``backend``, or dask when it is auto and ``CONCUR_BACKEND=dask``."""
    if backend == "auto" and environment_override() == "dask":
        return "dask"
    return backend


def _source(backend: str) -> str:
    return "given" if backend == "dask" else "CONCUR_BACKEND"


def check_backend(backend: str, workers: int | None) -> str | None:
    """The backend to force on the run, or None to let auto decide."""
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}"
        )
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an int >= 1, not {workers!r}")
    return None if backend == "auto" else backend


def _stream(
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    backend: str,
    workers: int | None,
    ordered: bool = True,
    return_exceptions: bool = False,
    timeout: float | None = None,
) -> AutoMap:
    return AutoMap(
        fn,
        iterables,
        ordered=ordered,
        return_exceptions=return_exceptions,
        workers=workers,
        forced_backend=check_backend(backend, workers),
        timeout=check_timeout(timeout),
    )


def map(
    fn: Callable[..., R],
    *iterables: Iterable[Any],
    backend: Backend = DEFAULT_BACKEND,
    workers: int | None = None,
    timeout: float | None = None,
    progress: bool = False,
) -> Results:
    """``list(builtins.map(fn, *iterables))``, computed where it runs best.

    Results are in input order; the first failed item raises its exception
    (with the worker's traceback) once the workers are stopped. ``timeout``
    bounds the whole call (``TimeoutError``). ``progress=True`` draws a bar
    on a terminal. The returned list's ``decision`` says where it ran.
    """
    if _where(backend) == "dask":
        return _dask_map(fn, iterables, workers, timeout, progress, _source(backend))
    stream = _stream(fn, iterables, backend, workers, timeout=timeout)
    try:
        if progress:
            results = Results(track(stream, length_hint(iterables), stream.where))
        else:
            results = Results()
            stream.to_list(results)
    finally:
        stream.close()
    results.decision = stream.decision
    return results


class _Imap(Iterator[Any]):
    """What ``concur.imap`` returns: the results, and the ``decision`` behind them."""

    def __init__(self, stream: AutoMap | _DaskStream, results: Iterator[Any]) -> None:
        self._stream = stream
        self._results = results

    @property
    def decision(self) -> Decision | None:
        return self._stream.decision

    @property
    def decisions(self) -> list[Decision]:
        return self._stream.decisions

    def __iter__(self) -> _Imap:
        return self

    def __next__(self) -> Any:
        return next(self._results)

    def close(self) -> None:
        """Stop: cancel what has not started and stop the workers."""
        self._stream.close()


def imap(
    fn: Callable[..., R],
    *iterables: Iterable[Any],
    backend: Backend = DEFAULT_BACKEND,
    workers: int | None = None,
    ordered: bool = True,
    return_exceptions: bool = False,
    progress: bool = False,
) -> _Imap:
    """Stream ``fn(*args)`` over the iterables, lazily (endless input is fine).

    The workers live as long as the iteration: when the iterator is
    exhausted they stay warm for the next call (as ``map``'s do); closed
    or garbage-collected while chunks still run, they stop. ``decision`` on the iterator says
    where the work runs now; ``decisions`` lists every change.
    """
    if _where(backend) == "dask":
        how = _source(backend)
        return _dask_imap(fn, iterables, workers, ordered, return_exceptions, progress, how)
    stream = _stream(fn, iterables, backend, workers, ordered, return_exceptions)
    results: Iterator[Any] = stream
    if progress:
        results = track(stream, length_hint(iterables), stream.where)
    return _Imap(stream, results)


def run(
    fn: Callable[..., R],
    *args: Any,
    backend: Backend = DEFAULT_BACKEND,
    timeout: float | None = None,
    **kwargs: Any,
) -> R:
    """Call ``fn(*args, **kwargs)`` once and return its result.

    A single call has nothing to overlap with, so ``"auto"`` runs it inline,
    unless a ``timeout`` is given: only a process can be stopped, so then it
    runs in one. A process past ``timeout`` is killed (``TaskTimeout``); a
    thread cannot be stopped and is left to finish (``WaitTimeout``).
    """
    check_backend(backend, None)
    timeout = check_timeout(timeout)
    if backend == "auto":
        chosen = environment_override() or ("process" if timeout is not None else "inline")
        log.info("concur auto: run %s %s", describe(fn), chosen)
        backend = chosen  # type: ignore[assignment]
    if backend == "inline":
        return fn(*args, **kwargs)
    if backend == "dask":
        with _dask_pool(None) as pool:
            done: R = pool.options(timeout=timeout).submit(fn, *args, **kwargs).result()
            return done
    kind: Literal["process", "thread"] = "thread" if backend == "thread" else "process"
    from ._spawn import spawn  # what the other calls here never need

    worker = spawn(fn, *args, kind=kind, daemon=True, **kwargs)
    try:
        result: R = worker.result(timeout)
        return result
    except WaitTimeout:
        if kind == "thread":
            raise  # a thread cannot be stopped; it finishes on its own
        assert timeout is not None
        raise TaskTimeout(describe(fn), timeout, worker.pid) from None
    finally:
        if kind == "process" and worker.is_alive():
            worker.kill()
            worker.join()


# -- backend="dask" -----------------------------------------------------------


def _dask_pool(workers: int | None) -> DaskPool:
    import os

    from .dask_pool import DaskPool

    if workers is not None and not os.environ.get("DASK_SCHEDULER_ADDRESS"):
        return DaskPool(n_workers=workers)
    return DaskPool()


def _dask_decision(pool: DaskPool, source: str) -> Decision:
    where = "a local cluster" if pool.local else f"the cluster at {pool.address}"
    said = "backend='dask' given" if source == "given" else "set by CONCUR_BACKEND=dask"
    return Decision(
        "dask",
        pool.max_workers,
        0,
        f"{said}: {pool.max_workers} worker threads on {where}; chunks sized from measured time",
        source=source,
    )


def _dask_map(
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    workers: int | None,
    timeout: float | None,
    progress: bool,
    source: str,
) -> Results:
    with _dask_pool(workers) as pool:
        decision = _dask_decision(pool, source)
        stream: Iterator[Any] = pool.map(fn, *iterables, timeout=timeout)
        if progress:
            stream = track(stream, length_hint(iterables), lambda: "dask")
        results = Results(stream)
    results.decision = decision
    return results


class _DaskStream(Iterator[Any]):
    """``concur.imap`` on Dask: the pool lives as long as the iteration."""

    def __init__(self, pool: Any, results: Iterator[Any], source: str) -> None:
        self._pool = pool
        self._results = results
        self.decision: Decision | None = _dask_decision(pool, source)
        self.decisions = [self.decision]

    def __iter__(self) -> _DaskStream:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._results)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=False, cancel_futures=True)

    def __del__(self) -> None:
        self.close()


def _dask_imap(
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    workers: int | None,
    ordered: bool,
    return_exceptions: bool,
    progress: bool,
    source: str,
) -> _Imap:
    pool = _dask_pool(workers)
    results = pool.imap(fn, *iterables, ordered=ordered, return_exceptions=return_exceptions)
    stream = _DaskStream(pool, results, source)
    shown: Iterator[Any] = stream
    if progress:
        shown = track(stream, length_hint(iterables), lambda: "dask")
    return _Imap(stream, shown)
