"""concur as a joblib backend: ``import concur.joblib`` registers ``"concur"``.

::

    import joblib
    import concur.joblib  # registers the backend

    with joblib.parallel_config(backend="concur", n_jobs=2, task_timeout=60):
        joblib.Parallel()(joblib.delayed(f)(x) for x in items)   # and scikit-learn's n_jobs

Each batch joblib dispatches is one task of a ``concur.ProcessPool``: a
worker that dies fails that call with ``WorkerCrashed`` (joblib raises it
and stops the call; the next call gets a working pool), an exception
arrives with its own type and the worker's traceback, and the pool's
options (``task_timeout``, ``retries``, ``max_tasks_per_child``,
``max_memory_per_child``, ``mp_context``, ``initializer``, ``initargs``,
``forward_logging``) pass through ``parallel_config(...)`` or
``Parallel(...)``.

Between calls the pool stays warm: a call that ends cleanly parks it for
``CONCUR_KEEP_WARM`` seconds (default 10, 0 for none), and the next call
that asks for the same pool (workers and options) takes it over, so
scikit-learn's many short ``Parallel`` calls pay for starting workers (and
their imports) once. It is kept on the shelf ``concur.map`` parks its
pools on (``auto.warm``), one joblib pool at most; ``release_warm()``, here
or in ``concur.auto``, stops them now. A call that fails or is cut short kills its workers, as
joblib's ``abort_everything`` asks. Nested ``Parallel`` calls inside a
worker use joblib's defaults (threads, then sequential).

joblib is not a dependency of concur: ``pip install 'concur[joblib]'``.
See docs/joblib.md.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

try:
    import joblib
    from joblib.parallel import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
        register_parallel_backend,
    )
except ImportError as error:  # tests/test_joblib.py hides joblib to check this
    raise ImportError(
        "concur.joblib needs joblib 1.3 or later: pip install 'concur[joblib]'"
    ) from error

from . import _task
from ._proc import cpu_count
from .auto import warm
from .processes import ProcessPool

__all__ = ["NAME", "ConcurBackend", "release_warm"]

NAME = "concur"

# ProcessPool's own options, passed through parallel_config(...) or Parallel(...).
POOL_OPTIONS = frozenset(
    {
        "mp_context",
        "initializer",
        "initargs",
        "max_tasks_per_child",
        "max_memory_per_child",
        "task_timeout",
        "retries",
        "forward_logging",
    }
)
# What Parallel hands every backend for joblib's own memory mapping and
# process start: concur places large arrays in shared memory itself and
# starts its workers its own way (mp_context=), so these are not used.
_JOBLIB_ARGS = frozenset({"max_nbytes", "temp_folder", "mmap_mode", "verbose", "context"})


def _joblib_version() -> tuple[int, ...]:
    parts = []
    for part in str(joblib.__version__).split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _joblib_version() < (1, 3):
    raise ImportError(
        f"concur.joblib needs joblib 1.3 or later (its callback API); found {joblib.__version__}: "
        "pip install 'concur[joblib]'"
    )


def pool_options(given: dict[str, Any]) -> dict[str, Any]:
    """The ProcessPool options among ``given``; joblib's own arguments are dropped."""
    unknown = sorted(set(given) - POOL_OPTIONS - _JOBLIB_ARGS)
    if unknown:
        raise TypeError(
            f"the concur joblib backend does not take {', '.join(unknown)}; it takes "
            f"concur.ProcessPool's options: {', '.join(sorted(POOL_OPTIONS))} "
            "(see docs/joblib.md)"
        )
    return {name: value for name, value in given.items() if name in POOL_OPTIONS}


Key = tuple[int, dict[str, Any]]
_KIND = "joblib"  # its place on concur's shelf of warm pools (``auto.warm``)


def release_warm() -> None:
    """Stop the pools kept warm between calls, the joblib backend's and
    ``concur.map``'s, now (tests, a quiet phase, before a fork). A call in
    progress keeps its own."""
    warm.release_warm()


class _Batch:
    """One joblib batch as one concur task, named after the function it calls
    (in ``WorkerCrashed`` and ``TaskTimeout`` messages and ``concur ps``)."""

    def __init__(self, batch: Callable[[], Any]) -> None:
        self.batch = batch
        items = getattr(batch, "items", None) or []
        what = _function_name(items[0][0]) if items else _task.describe(batch)
        calls = "1 call" if len(items) == 1 else f"{len(items)} calls"
        self.__name__ = f"{what} (a joblib batch of {calls})"
        self.__module__ = ""  # the name above is complete

    def __call__(self) -> Any:
        return self.batch()


def _function_name(func: object) -> str:
    # scikit-learn's delayed wraps the function (.function), functools.partial too (.func).
    inner = getattr(func, "function", None) or getattr(func, "func", None)
    return _task.describe(inner if callable(inner) else func)


class _Lease:
    """A pool one backend uses, with the count of its calls not yet settled."""

    def __init__(self, key: Key, pool: ProcessPool) -> None:
        self.key = key
        self.pool = pool
        self.running = 0
        self.lock = threading.Lock()

    def settled(self, _future: object = None) -> None:
        with self.lock:
            self.running -= 1

    def idle(self) -> bool:
        with self.lock:
            return self.running == 0


class ConcurBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ``ParallelBackendBase`` on a ``concur.ProcessPool``.

    ``n_jobs`` is the pool's ``max_workers`` (negative: counted back from
    the CPUs this process may use, ``-1`` for all); ``n_jobs=1`` runs the
    calls in the caller, as joblib's own backends do. The keyword arguments
    are ProcessPool's (``POOL_OPTIONS``); those given to ``Parallel(...)``
    override those of ``parallel_config(...)``.
    """

    supports_retrieve_callback = True
    uses_threads = False
    supports_sharedmem = False
    default_n_jobs = 1

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **options: Any,
    ) -> None:
        # (joblib before 1.5 takes no other keyword arguments here)
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._options = pool_options(options)
        self._lease: _Lease | None = None
        self.parallel: Any = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning; use 1 or more, or -1")
        if n_jobs is None:
            return 1
        nested = bool(self.nesting_level) and not self.in_main_thread()
        if nested:
            # As joblib's process backends: no process pool from a worker's thread.
            if n_jobs != 1:
                warnings.warn(
                    "concur-backed parallel loops cannot be nested below threads; setting n_jobs=1",
                    stacklevel=3,
                )
            return 1
        if n_jobs < 0:
            return max(cpu_count() + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **options: Any,
    ) -> int:
        workers = self.effective_n_jobs(n_jobs)
        if workers == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        key: Key = (workers, {**self._options, **pool_options(options)})
        self.parallel = parallel
        lease = self._lease
        if lease is not None and not (warm.same_key(lease.key, key) and lease.pool.accepting()):
            self._let_go()
        if self._lease is None:
            parked = warm.shelf.lease(_KIND, key)
            assert parked is None or isinstance(parked, ProcessPool)
            self._lease = _Lease(key, parked or ProcessPool(workers, **key[1]))
        return workers

    def compute_batch_size(self) -> int:
        # One call per task where a task's limit is per call: a time limit,
        # and max_tasks_per_child (it counts tasks).
        options = self._lease.key[1] if self._lease is not None else self._options
        if options.get("task_timeout") is not None or options.get("max_tasks_per_child"):
            return 1
        return int(super().compute_batch_size())

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Future[Any]], None] | None = None
    ) -> Future[Any]:
        lease = self._lease
        if lease is None:
            raise RuntimeError(
                "the concur joblib backend was used before Parallel configured it "
                "(or after it ended); call it through joblib.Parallel"
            )
        with lease.lock:
            lease.running += 1
        try:
            future = lease.pool.submit(_Batch(func))
        except BaseException:
            lease.settled()
            raise
        future.add_done_callback(lease.settled)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    # joblib 1.3 and 1.4 call it by its older name.
    apply_async = submit

    def retrieve_result_callback(self, future: Future[Any]) -> Any:
        return future.result()

    def terminate(self) -> None:
        self._let_go()
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Kill the workers (running calls are not wanted any more); with
        ``ensure_ready``, a fresh pool for the next call of this Parallel."""
        lease = self._lease
        if lease is None:
            return
        # The new pool is in place first: a batch a callback thread was
        # dispatching as the call failed lands there, not on a closed pool.
        workers, options = lease.key
        self._lease = _Lease(lease.key, ProcessPool(workers, **options)) if ensure_ready else None
        lease.pool.abort()

    def _let_go(self) -> None:
        """Park the pool for the next call when it is idle; stop it otherwise."""
        lease, self._lease = self._lease, None
        if lease is None:
            return
        if lease.idle():
            if not warm.shelf.park(_KIND, lease.key, lease.pool):
                lease.pool.shutdown(wait=True, cancel_futures=True)
        else:
            lease.pool.abort()


register_parallel_backend(NAME, ConcurBackend)
