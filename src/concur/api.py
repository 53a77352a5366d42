"""One-shot helpers: run a function over data, or once, without managing a pool.

Each call starts the workers it needs, uses them, and stops them, so nothing
is left running afterwards. ``backend`` chooses where the work runs:

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
    work too small to be worth sending anywhere.

Whatever runs it, the result says how: ``concur.map`` returns a list with a
``decision`` attribute, and ``concur.imap`` an iterator with one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, TypeVar

from ._pool import check_timeout, length_hint
from ._progress import track
from ._task import describe
from .auto import AutoMap, Decision, environment_override
from .errors import TaskTimeout, WaitTimeout
from .spawn import spawn

R = TypeVar("R")

Backend = Literal["auto", "process", "thread", "inline"]
BACKENDS = ("auto", "process", "thread", "inline")
DEFAULT_BACKEND: Backend = "auto"

log = logging.getLogger("concur.auto")


class Results(list[Any]):
    """The list ``concur.map`` returns, with the ``decision`` that produced it."""

    decision: Decision | None = None


def _check(backend: str, workers: int | None) -> str | None:
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
        forced_backend=_check(backend, workers),
        timeout=check_timeout(timeout),
    )


def _label(stream: AutoMap) -> Callable[[], str]:
    def label() -> str:
        d = stream.decision
        return "measuring" if d is None else f"{d.backend} × {d.workers}"

    return label


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
    stream = _stream(fn, iterables, backend, workers, timeout=timeout)
    try:
        if progress:
            results = Results(track(stream, length_hint(iterables), _label(stream)))
        else:
            results = Results()
            stream.to_list(results)
    finally:
        stream.close()
    results.decision = stream.decision
    return results


class _Imap(Iterator[Any]):
    """What ``concur.imap`` returns: the results, and the ``decision`` behind them."""

    def __init__(self, stream: AutoMap, results: Iterator[Any]) -> None:
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

    The workers live as long as the iteration: they stop when the iterator is
    exhausted, closed, or garbage-collected. ``decision`` on the iterator says
    where the work runs now; ``decisions`` lists every change.
    """
    stream = _stream(fn, iterables, backend, workers, ordered, return_exceptions)
    results: Iterator[Any] = stream
    if progress:
        results = track(stream, length_hint(iterables), _label(stream))
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
    _check(backend, None)
    timeout = check_timeout(timeout)
    if backend == "auto":
        chosen = environment_override() or ("process" if timeout is not None else "inline")
        log.info("concur auto: run %s %s", describe(fn), chosen)
        backend = chosen  # type: ignore[assignment]
    if backend == "inline":
        return fn(*args, **kwargs)
    kind: Literal["process", "thread"] = "thread" if backend == "thread" else "process"
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
