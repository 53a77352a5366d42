"""One-shot helpers: run a function over data, or once, without managing a pool.

Each call starts a pool sized for the work, uses it, and shuts it down, so
nothing is left running afterwards. ``backend`` chooses where the work runs:

``"process"`` (the default)
    worker processes, one per CPU: for work that computes in Python;
``"thread"``
    worker threads: for work that waits (network, disk, sleeps, or C code
    that releases the GIL);
``"inline"``
    in the calling thread, one item after another: for debugging, and for
    work too small to be worth sending anywhere.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, TypeVar

from ._pool import ChunkSize, PoolBase, check_timeout
from .processes import ProcessPool
from .spawn import spawn
from .threads import ThreadPool

R = TypeVar("R")

Backend = Literal["process", "thread", "inline"]
BACKENDS = ("process", "thread", "inline")
DEFAULT_BACKEND: Backend = "process"


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}"
        )


def _pool(backend: str, workers: int | None) -> PoolBase:
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers!r}")
    if backend == "thread":
        return ThreadPool(workers)
    return ProcessPool(workers)


def map(
    fn: Callable[..., R],
    *iterables: Iterable[Any],
    backend: Backend = DEFAULT_BACKEND,
    workers: int | None = None,
    chunksize: ChunkSize = "auto",
    timeout: float | None = None,
) -> list[R]:
    """``list(builtins.map(fn, *iterables))``, computed on ``backend``.

    Results are in input order; the first failed item raises its exception
    (with the worker's traceback) after the pool is shut down.
    """
    _check_backend(backend)
    check_timeout(timeout)
    if backend == "inline":
        return list(builtins.map(fn, *iterables))
    with _pool(backend, workers) as pool:  # Ctrl-C: the pool stops at once
        try:
            return list(pool.map(fn, *iterables, timeout=timeout, chunksize=chunksize))
        except Exception:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def imap(
    fn: Callable[..., R],
    *iterables: Iterable[Any],
    backend: Backend = DEFAULT_BACKEND,
    workers: int | None = None,
    ordered: bool = True,
    chunksize: ChunkSize = "auto",
    return_exceptions: bool = False,
) -> Iterator[R]:
    """Stream ``fn(*args)`` over the iterables (lazily, endless input is fine).

    The pool lives as long as the iteration: it shuts down when the iterator
    is exhausted, closed, or garbage-collected.
    """
    _check_backend(backend)
    if backend == "inline":
        return _inline_imap(fn, iterables, return_exceptions)
    return _pooled_imap(fn, iterables, backend, workers, ordered, chunksize, return_exceptions)


def _inline_imap(
    fn: Callable[..., R], iterables: tuple[Iterable[Any], ...], return_exceptions: bool
) -> Iterator[Any]:
    for args in zip(*iterables, strict=False):
        try:
            yield fn(*args)
        except Exception as exc:
            if not return_exceptions:
                raise
            yield exc


def _pooled_imap(
    fn: Callable[..., R],
    iterables: tuple[Iterable[Any], ...],
    backend: str,
    workers: int | None,
    ordered: bool,
    chunksize: ChunkSize,
    return_exceptions: bool,
) -> Iterator[R]:
    pool = _pool(backend, workers)
    try:
        yield from pool.imap(
            fn,
            *iterables,
            ordered=ordered,
            chunksize=chunksize,
            return_exceptions=return_exceptions,
        )
    except KeyboardInterrupt:
        pool._abort()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run(
    fn: Callable[..., R],
    *args: Any,
    backend: Backend = DEFAULT_BACKEND,
    timeout: float | None = None,
    **kwargs: Any,
) -> R:
    """Call ``fn(*args, **kwargs)`` once on ``backend`` and return its result.

    A process is killed if it runs past ``timeout`` (``TimeoutError``); a
    thread cannot be stopped, so it is left to finish on its own.
    """
    _check_backend(backend)
    timeout = check_timeout(timeout)
    if backend == "inline":
        return fn(*args, **kwargs)
    kind: Literal["process", "thread"] = "thread" if backend == "thread" else "process"
    worker = spawn(fn, *args, kind=kind, daemon=True, **kwargs)
    try:
        result: R = worker.result(timeout)
        return result
    finally:
        if kind == "process" and worker.is_alive():
            worker.kill()
            worker.join()
