"""``concur.DaskPool``: the pools' API on a Dask distributed cluster.

A ``concurrent.futures.Executor`` over a ``distributed.Client``. With no
address (and no ``DASK_SCHEDULER_ADDRESS`` in the environment) it starts a
``LocalCluster`` of worker processes, one thread each, on 127.0.0.1, and
closes it on shutdown; with an address it joins that cluster and leaves it
running.

The local cluster speaks TLS with temporary credentials made for it
(Dask's ``security=True``): the scheduler and workers accept only
connections that present its certificate, which only this pool and the
cluster's own processes hold. Without them, another program on the
machine, which could otherwise connect to 127.0.0.1 and run code as this
user, is refused.

The semantics are the local pools': ``map`` in order, ``imap`` lazy and
bounded, chunks sized from measured time so that Dask's per-task cost
(about a millisecond through the scheduler) is spread over many items; an
exception raised in a task comes back with its own type and the worker's
traceback as ``__cause__``; a task whose worker died (after Dask's own
retries, ``KilledWorker``) fails alone with ``WorkerCrashed``; a task past
its ``timeout`` fails with ``TaskTimeout`` on time.

Two differences, both Dask's: a task's time limit counts from submission
(Dask does not tell the client when a task starts), and a task past its
limit is released, not stopped, since Dask runs it on a worker thread that
cannot be interrupted. A cancelled task that runs on the pool's own local
cluster is stopped all the same: the worker process running it, a
descendant of this one, is killed, and its nanny starts a fresh one.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import _future, _pool, _share, _task
from ._deadlines import Deadlines
from .errors import PoolClosed, SerializationError, TaskTimeout, WorkerCrashed

# A local cluster: on loopback only, and TLS with temporary credentials (see above).
_LOCAL_ONLY = {"dashboard_address": "127.0.0.1:0", "host": "127.0.0.1", "security": True}
_RELEASED = (
    "Dask cannot stop a running task, so it was released and its worker thread "
    "finishes it unobserved (the limit counts from submission)"
)


def _missing(what: str = "Dask distributed") -> ImportError:
    return ImportError(f"concur.DaskPool needs {what}: pip install 'concur[dask]'")


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Runs on a Dask worker: the outcome, with an exception packed as the
    process pool packs it (type, message, traceback text)."""
    try:
        return (_task.OK, fn(*args, **kwargs))
    except BaseException as exc:
        return (_task.ERR, _task.pack_exception(exc))


class _DaskFuture(Future[Any]):
    """A concurrent.futures Future whose ``cancel()`` also cancels the Dask
    task; on the pool's own local cluster it also stops the task if it runs
    (``stop``: kills the worker process running it)."""

    def __init__(self, remote: Any, stop: Callable[[Any], None] | None) -> None:
        super().__init__()
        self.remote = remote
        self.stop = stop

    def cancel(self) -> bool:
        remote = self.remote
        if not super().cancel():
            return False
        if remote is not None:
            if self.stop is not None:
                self.stop(remote)  # also stops it if it runs
            else:
                remote.cancel()
        return True


def _pid_running(key: Any, dask_scheduler: Any = None) -> int | None:
    """Runs on the scheduler: the pid of the worker processing ``key``, if any."""
    task = dask_scheduler.tasks.get(key)
    worker = getattr(task, "processing_on", None)
    return None if worker is None else worker.pid


def _stop_remote(client: Any, remote: Any) -> None:
    """Kill the local worker process that runs ``remote``'s task (its nanny
    starts a fresh one), then cancel the task. In a thread of its own: it
    asks the scheduler, and ``cancel()`` may be called on an event loop."""
    try:
        pid = client.run_on_scheduler(_pid_running, remote.key)
        if pid is not None and _descends_from_here(pid):
            os.kill(pid, signal.SIGKILL)
    except Exception:  # the cluster is closing, or the task just ended
        pass
    try:
        remote.cancel()
    except Exception:
        pass


def _descends_from_here(pid: int) -> bool:
    """Only this pool's own cluster's workers (this process's descendants) are killed."""
    import psutil

    try:
        return any(parent.pid == os.getpid() for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def _expire(future: Future[Any], label: str, timeout: float) -> Callable[[], None] | None:
    """The task overran its limit: fail the future, release the Dask task
    (its worker thread runs on; Dask cannot stop it)."""
    if future.done():
        return None

    def fail() -> None:
        _future.settle(future, error=TaskTimeout(label, timeout, None, _RELEASED))
        remote = getattr(future, "remote", None)
        if remote is not None:
            remote.cancel()

    return fail


class DaskPool(_pool.PoolBase):
    """An Executor on Dask distributed; see the module docstring.

    ``address``: a scheduler such as ``"tcp://10.0.0.5:8786"``; default
    ``DASK_SCHEDULER_ADDRESS``, else a local cluster started here with
    ``cluster_options`` (``LocalCluster`` arguments; defaults: one worker
    process per core, one thread each, 127.0.0.1, TLS with temporary
    credentials: ``security=True``).
    ``task_timeout`` and ``retries`` are the pools' per-task settings; Dask
    also retries a task on another worker when its worker dies (up to
    ``distributed.scheduler.allowed-failures``, 3 by default).
    """

    _kind = "dask"

    def __init__(
        self,
        address: str | None = None,
        *,
        task_timeout: float | None = None,
        retries: int = 0,
        **cluster_options: Any,
    ) -> None:
        try:
            distributed: Any = importlib.import_module("distributed")
        except ImportError:
            raise _missing() from None
        if address is not None and not isinstance(address, str):
            raise TypeError(
                "DaskPool's first argument is a scheduler's address (a str), "
                f"not {address!r}; for a local cluster of N workers, "
                "write DaskPool(n_workers=N)"
            )
        self._defaults = _pool.TaskOptions(_pool.check_timeout(task_timeout), retries)
        address = address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        self._cluster: Any = None
        if address is None:
            options: dict[str, Any] = {
                "n_workers": os.cpu_count() or 1,
                "threads_per_worker": 1,
                "processes": True,
                **_LOCAL_ONLY,
            }
            options.update(cluster_options)
            if options["security"] is True and importlib.util.find_spec("cryptography") is None:
                raise _missing("cryptography, for its local cluster's TLS credentials")
            self._cluster = distributed.LocalCluster(**options)
            self._client: Any = distributed.Client(self._cluster, set_as_default=False)
        else:
            if cluster_options:
                raise TypeError(
                    "cluster options apply to a local cluster; "
                    f"got {sorted(cluster_options)} with address {address!r}"
                )
            self._client = distributed.Client(address, set_as_default=False)
        self.address: str = str(self._client.scheduler_info()["address"])
        self._max_workers = max(1, sum(self._client.nthreads().values()))
        self._closed = False
        self._lock = threading.Lock()
        self._live: set[_DaskFuture] = set()
        self._deadlines = Deadlines("concur-dask-deadlines")
        self._scattered: weakref.WeakKeyDictionary[_share.Shared, Any] = weakref.WeakKeyDictionary()

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` underneath, for what Dask offers beyond this API."""
        return self._client

    @property
    def max_workers(self) -> int:
        """Worker threads in the cluster when the pool was made (its ``nthreads``)."""
        return self._max_workers

    @property
    def local(self) -> bool:
        """Whether the pool started (and will close) a local cluster of its own."""
        return self._cluster is not None

    def _submit_with(
        self,
        options: _pool.TaskOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[Any]:
        args = self._placed(args)
        keys, values = tuple(kwargs), self._placed(tuple(kwargs.values()))
        kwargs = dict(zip(keys, values, strict=True))
        return self._submit(options, _call, (fn, args, kwargs), _task.describe(fn), False)

    def submit_chunk(
        self,
        fn: Callable[..., Any],
        items: list[tuple[Any, ...]],
        fn_blob: bytes | None,
        options: _pool.TaskOptions,
    ) -> Future[_pool.ChunkResult]:
        label = f"{_task.describe(fn)} ×{len(items)}"
        items = [self._placed(args) for args in items]
        return self._submit(options, _task.run_chunk, (fn, items, True), label, True)

    def _placed(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """``args`` with each ``concur.share()`` handle replaced by its object
        scattered to every worker, once per handle (Dask's own way to place
        data once); the tasks receive the object itself."""
        if not any(type(arg) is _share.Shared for arg in args):
            return args
        return tuple(self._scatter(a) if type(a) is _share.Shared else a for a in args)

    def _scatter(self, handle: _share.Shared) -> Any:
        if handle.closed:
            raise SerializationError(
                "this concur.share() handle was closed: share the object again",
                what="shared object",
            )
        placed = self._scattered.get(handle)
        if placed is None:
            placed = self._client.scatter(handle.value, broadcast=True, hash=False)
            self._scattered[handle] = placed  # on the cluster while the handle lives
        return placed

    def _submit(
        self,
        options: _pool.TaskOptions,
        target: Callable[..., Any],
        args: tuple[Any, ...],
        label: str,
        chunk: bool,
    ) -> Future[Any]:
        with self._lock:
            if self._closed:
                raise PoolClosed("cannot submit to a DaskPool after shutdown()")
            remote = self._client.submit(target, *args, pure=False, retries=options.retries)
            future = _DaskFuture(remote, self._stop if self._cluster is not None else None)
            self._live.add(future)
        remote.add_done_callback(lambda done: self._settle(future, done, label, chunk))
        if options.timeout is not None:
            timeout = options.timeout
            due = time.monotonic() + timeout
            self._deadlines.add(future, due, lambda: _expire(future, label, timeout))
            future.add_done_callback(self._deadlines.remove)
        return future

    def _stop(self, remote: Any) -> None:
        client = self._client
        name = "concur-dask-stop"
        threading.Thread(target=_stop_remote, args=(client, remote), name=name, daemon=True).start()

    def _settle(self, future: Future[Any], remote: Any, label: str, chunk: bool) -> None:
        if remote.status == "lost" and not future.done():
            # its worker died; Dask runs it again elsewhere: wait for that
            remote.add_done_callback(lambda done: self._settle(future, done, label, chunk))
            return
        try:
            if future.done():
                return
            status = remote.status
            if status == "finished":
                value = remote.result()
                if chunk:
                    _future.settle(future, value)
                else:
                    _future.settle_outcome(future, value)
            elif status == "cancelled":
                future.cancel()
            else:
                _future.settle(future, error=self._error(remote.exception(), label, status))
        except BaseException as exc:  # the client itself failed: say so on the future
            _future.settle(future, error=exc)
        finally:
            with self._lock:
                self._live.discard(future)
            if isinstance(future, _DaskFuture):
                future.remote = None  # let the cluster forget the result we now hold

    @staticmethod
    def _error(error: BaseException | None, label: str, status: str) -> BaseException:
        from distributed.scheduler import KilledWorker

        if isinstance(error, KilledWorker):
            crashed = WorkerCrashed(None, None, label)
            crashed.args = (
                f"the Dask workers running {label} died (KilledWorker: {error}). "
                "Only this task failed; the cluster goes on.",
            )
            crashed.__cause__ = error
            return crashed
        return error if error is not None else RuntimeError(f"{label} failed in Dask ({status})")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed and self._client is None:
                return
            self._closed = True
            live = list(self._live)
        if cancel_futures:
            for future in live:
                future.cancel()
        if wait:
            for future in live:
                try:
                    future.exception()
                except BaseException:
                    pass
        self._deadlines.close()
        self._close_client()

    def _close_client(self) -> None:
        with self._lock:
            client, cluster = self._client, self._cluster
            self._client, self._cluster = None, None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def abort(self) -> None:
        self.shutdown(wait=False, cancel_futures=True)
