"""Ways of running the benchmark's work, each through its own usual API.

A backend makes a ``Runner`` for ``workers`` workers (None: the library's own
default). The scenarios need three things from it: ``map(fn, items)`` (the
results, in order), ``call(fn, arg)`` (one round trip on warm workers) and
``deliver(fn, items, deadline)`` (how many results arrive when some tasks
kill their worker), plus ``close()``. A peer whose library is missing says so
(``unavailable``) instead of disappearing from the table.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import multiprocessing
import pickle
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .._proc import cpu_count
from ..api import map as concur_map
from ..auto import AutoPool
from ..processes import ProcessPool, default_start_method
from ..threads import ThreadPool

Fn = Callable[[Any], Any]


class StatsSink:
    """Where a concur pool's ``stats()`` go when its runner closes, while
    ``take`` is set (``concur bench --stats``)."""

    take: Callable[[Any], None] | None = None


STATS = StatsSink()


def report_stats(pool: Any) -> None:
    stats = getattr(pool, "stats", None)
    if STATS.take is not None and callable(stats):
        STATS.take(stats())


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def count_futures(futures: Iterable[Future[Any]], deadline: float) -> int:
    """Results that arrive by ``deadline``; a failed or lost task counts zero."""
    delivered = 0
    for future in futures:
        try:
            future.result(timeout=_left(deadline))
            delivered += 1
        except TimeoutError:
            break  # stuck: nothing more will come
        except Exception:
            continue
    return delivered


class Runner:
    """What the scenarios drive."""

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def call(self, fn: Fn, arg: Any) -> Any:
        raise NotImplementedError

    def deliver(self, fn: Fn, items: list[Any], deadline: float) -> int:
        """How many of ``fn(item)`` come back by ``deadline``."""
        raise NotImplementedError

    def map_same(self, fn: Fn, obj: Any, n: int) -> list[Any]:
        """``fn(obj)`` ``n`` times, the same object given to every task, the
        library's own way (here: as every task's argument)."""
        return self.map(fn, [obj] * n)

    def close(self) -> None:
        """Release the workers (nothing to do for serial)."""


class SerialRunner(Runner):
    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        return [fn(item) for item in items]

    def call(self, fn: Fn, arg: Any) -> Any:
        return fn(arg)


class ExecutorRunner(Runner):
    """Any concurrent.futures Executor: map, submit().result()."""

    def __init__(self, executor: Executor, chunksize: int | None = None) -> None:
        self.executor = executor
        self.chunksize = chunksize

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        if self.chunksize is None:
            return list(self.executor.map(fn, items))
        return list(self.executor.map(fn, items, chunksize=self.chunksize))

    def call(self, fn: Fn, arg: Any) -> Any:
        return self.executor.submit(fn, arg).result()

    def deliver(self, fn: Fn, items: list[Any], deadline: float) -> int:
        futures = []
        for item in items:
            try:
                futures.append(self.executor.submit(fn, item))
            except Exception:  # a broken pool refuses the rest
                break
        return count_futures(futures, deadline)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        report_stats(self.executor)


class AutoRunner(Runner):
    """concur's auto backend: concur.map for runs, an AutoPool for single calls."""

    def __init__(self, workers: int | None) -> None:
        self.workers = workers
        self.pool: AutoPool | None = None

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        return concur_map(fn, items, workers=self.workers)  # already a list

    def _pool(self) -> AutoPool:
        if self.pool is None:
            self.pool = AutoPool(self.workers)
        return self.pool

    def call(self, fn: Fn, arg: Any) -> Any:
        return self._pool().submit(fn, arg).result()

    def deliver(self, fn: Fn, items: list[Any], deadline: float) -> int:
        from ..api import imap

        results = imap(fn, items, workers=self.workers, return_exceptions=True)
        try:
            return sum(1 for value in results if not isinstance(value, BaseException))
        finally:
            results.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            report_stats(self.pool)


def _echo(requests: Any, answers: Any) -> None:
    """The bare pipe's other end: send back what arrives, until b""."""
    while True:
        data = requests.recv_bytes()
        if not data:
            return
        answers.send_bytes(data)


class PipeRunner(Runner):
    """No pool: a round trip through a pair of pipes to a process that echoes.

    The physical floor under any process pool's round trip on this machine,
    measured the same way (the argument and the answer pickled), over what
    concur's and the standard library's pools use: one pipe each way (not a
    socket pair, whose wake-ups cost differently). Only the latency
    scenario runs it.
    """

    def __init__(self, workers: int | None) -> None:
        ctx = _mp_context()
        requests, self.requests = ctx.Pipe(duplex=False)
        self.answers, answers = ctx.Pipe(duplex=False)
        self.process = ctx.Process(  # type: ignore[attr-defined]
            target=_echo, args=(requests, answers), name="concur-bench-pipe"
        )
        self.process.start()
        requests.close()
        answers.close()

    def call(self, fn: Fn, arg: Any) -> Any:
        self.requests.send_bytes(pickle.dumps(arg))
        return pickle.loads(self.answers.recv_bytes())

    def close(self) -> None:
        self.requests.send_bytes(b"")
        self.process.join(5)
        self.requests.close()
        self.answers.close()


def _mp_context() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context(default_start_method())


class MultiprocessingPoolRunner(Runner):
    """multiprocessing.Pool through its own map (its default chunksize)."""

    def __init__(self, workers: int | None) -> None:
        self.pool = _mp_context().Pool(workers)

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        return self.pool.map(fn, items)

    def call(self, fn: Fn, arg: Any) -> Any:
        return self.pool.apply(fn, (arg,))

    def deliver(self, fn: Fn, items: list[Any], deadline: float) -> int:
        pending = [self.pool.apply_async(fn, (item,)) for item in items]
        delivered = 0
        for result in pending:
            try:
                result.get(timeout=_left(deadline))
                delivered += 1
            except multiprocessing.TimeoutError:
                break  # a lost task never completes: Pool waits forever
            except Exception:
                continue
        return delivered

    def close(self) -> None:
        self.pool.terminate()  # close()+join() would wait forever for a lost task
        self.pool.join()


class JoblibRunner(Runner):
    """joblib.Parallel (its default loky backend); n_jobs=-1 when no count is given."""

    def __init__(self, workers: int | None) -> None:
        from joblib import Parallel

        self.parallel = Parallel(n_jobs=workers or -1)
        self.parallel.__enter__()  # keep the workers between calls, as joblib allows

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        from joblib import delayed

        return list(self.parallel(delayed(fn)(item) for item in items))

    def call(self, fn: Fn, arg: Any) -> Any:
        return self.map(fn, [arg])[0]

    def deliver(self, fn: Fn, items: list[Any], deadline: float) -> int:
        try:
            return len(self.map(fn, items))
        except Exception:  # one dead worker fails the whole call
            return 0

    def close(self) -> None:
        self.parallel.__exit__(None, None, None)
        # joblib keeps loky's workers for the next call; this run is over.
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)


class MpireRunner(Runner):
    """mpire.WorkerPool with its defaults (fork start method), kept alive between calls."""

    def __init__(self, workers: int | None) -> None:
        from mpire.pool import WorkerPool

        self.n_jobs = workers or cpu_count()
        self.pool = WorkerPool(n_jobs=self.n_jobs, keep_alive=True)

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        return list(self.pool.map(fn, items, concatenate_numpy_output=False))

    def call(self, fn: Fn, arg: Any) -> Any:
        return self.pool.apply(fn, (arg,))

    def deliver(self, fn: Fn, items: list[Any], deadline: float) -> int:
        delivered = 0
        try:
            for _ in self.pool.imap(fn, items, task_timeout=_left(deadline)):
                delivered += 1
        except Exception:
            pass  # the map stops at the first failure
        return delivered

    def map_same(self, fn: Fn, obj: Any, n: int) -> list[Any]:
        # shared_objects are set when a pool starts: a pool of its own.
        from mpire.pool import WorkerPool

        with WorkerPool(n_jobs=self.n_jobs, shared_objects=obj) as pool:
            return list(pool.map(functools.partial(_shared_call, fn), range(n)))

    def close(self) -> None:
        self.pool.terminate()


def _shared_call(fn: Fn, shared: Any, _index: int) -> Any:
    return fn(shared)


class PebbleRunner(Runner):
    """pebble.ProcessPool: map() for runs, schedule() for single calls."""

    def __init__(self, workers: int | None) -> None:
        from pebble import ProcessPool as PebblePool

        self.pool = PebblePool(max_workers=workers or cpu_count(), context=_mp_context())

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        return list(self.pool.map(fn, items).result())

    def call(self, fn: Fn, arg: Any) -> Any:
        return self.pool.schedule(fn, args=(arg,)).result()

    def deliver(self, fn: Fn, items: list[Any], deadline: float) -> int:
        futures = [self.pool.schedule(fn, args=(item,)) for item in items]
        return count_futures(futures, deadline)

    def close(self) -> None:
        self.pool.stop()  # type: ignore[no-untyped-call]
        self.pool.join()


_dask_clusters: dict[int, Any] = {}
_dask_log_levels: dict[str, int] = {}  # what the run changed, to put back


def _dask_cluster(workers: int) -> Any:
    """One local cluster per worker count for the whole benchmark run: Dask's
    start-up (about a second) is paid once, as a long-lived cluster would."""
    if workers not in _dask_clusters:
        distributed: Any = importlib.import_module("distributed")
        _dask_clusters[workers] = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            host="127.0.0.1",
            # The crash scenario kills workers on purpose; Dask's warnings
            # about each lost task would bury the tables.
            silence_logs=logging.CRITICAL,
        )
        _quiet_dask_here()
    return _dask_clusters[workers]


def _quiet_dask_here() -> None:
    """Silence the scheduler, nannies and client that run in this process.

    ``silence_logs`` quiets the distributed logger, but the loggers Dask's
    configuration gives levels of their own (distributed.scheduler,
    distributed.nanny, distributed.client) still print walls of warnings
    when the crash scenario kills workers, into the benchmark's output.
    """
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]
    for name in ["distributed", *names]:
        log = logging.getLogger(name)
        _dask_log_levels.setdefault(name, log.level)
        log.setLevel(logging.CRITICAL)


def close_shared() -> None:
    """Close what the run kept for all its scenarios (the Dask clusters)."""
    while _dask_clusters:
        _, cluster = _dask_clusters.popitem()
        cluster.close()
    while _dask_log_levels:
        name, level = _dask_log_levels.popitem()
        logging.getLogger(name).setLevel(level)


class ConcurDaskRunner(ExecutorRunner):
    """concur.DaskPool joined to the run's local cluster."""

    def __init__(self, workers: int | None) -> None:
        from ..dask_pool import DaskPool

        cluster = _dask_cluster(workers or cpu_count())
        super().__init__(DaskPool(cluster.scheduler_address))


class DaskRunner(Runner):
    """Dask's own API: client.map then gather, client.submit().result()."""

    def __init__(self, workers: int | None) -> None:
        distributed: Any = importlib.import_module("distributed")
        cluster = _dask_cluster(workers or cpu_count())
        self.client = distributed.Client(cluster.scheduler_address, set_as_default=False)

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        return list(self.client.gather(self.client.map(fn, items, pure=False)))

    def call(self, fn: Fn, arg: Any) -> Any:
        return self.client.submit(fn, arg, pure=False).result()

    def deliver(self, fn: Fn, items: list[Any], deadline: float) -> int:
        # Dask's futures answer result(timeout=) as concurrent.futures' do
        return count_futures(self.client.map(fn, items, pure=False), deadline)

    def map_same(self, fn: Fn, obj: Any, n: int) -> list[Any]:
        (placed,) = self.client.scatter([obj], broadcast=True)
        return list(self.client.gather(self.client.map(fn, [placed] * n, pure=False)))

    def close(self) -> None:
        self.client.close()


class LokyRunner(ExecutorRunner):
    """loky's reusable executor, as loky's own docs show it."""

    def __init__(self, workers: int | None) -> None:
        from loky import get_reusable_executor

        super().__init__(get_reusable_executor(max_workers=workers or cpu_count()))

    def close(self) -> None:
        self.executor.shutdown(wait=True, kill_workers=True)  # type: ignore[call-arg]


def _threads(n: int) -> Callable[[int | None], Runner]:
    """A ThreadPoolExecutor of ``n`` threads, whatever a scenario asks for."""
    return lambda workers: ExecutorRunner(ThreadPoolExecutor(n))


@dataclass(frozen=True)
class Backend:
    name: str
    family: str  # "serial", "baseline", "concur" or "peer"
    make: Callable[[int | None], Runner]
    # "none", "thread", "process", "auto" (compared with every peer), or
    # "pipe" (the bare pipe: only where a scenario asks for it)
    kind: str
    module: str | None = None  # the library a peer needs
    dedicated: bool = False  # runs only in the scenarios that name it
    # Part of --quick: the Dask backends are not (each run starts a cluster,
    # and tiny calls through a scheduler take seconds); --backend adds them.
    quick: bool = True

    def install_hint(self) -> str:
        extra = "dask" if self.module == "distributed" else "peers"
        return f"pip install 'concur[{extra}]'"

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or None."""
        if self.module and importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not installed ({self.install_hint()})"
        return None


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in [
        Backend("serial", "serial", lambda workers: SerialRunner(), "none"),
        Backend("bare-pipe", "baseline", PipeRunner, "pipe", dedicated=True),
        Backend("concur-thread", "concur", lambda w: ExecutorRunner(ThreadPool(w)), "thread"),
        Backend("concur-process", "concur", lambda w: ExecutorRunner(ProcessPool(w)), "process"),
        Backend("concur-auto", "concur", AutoRunner, "auto"),
        Backend("concur-dask", "concur", ConcurDaskRunner, "process", "distributed", quick=False),
        Backend(
            "ThreadPoolExecutor", "peer", lambda w: ExecutorRunner(ThreadPoolExecutor(w)), "thread"
        ),
        Backend(
            "ProcessPoolExecutor",
            "peer",
            lambda w: ExecutorRunner(ProcessPoolExecutor(w, mp_context=_mp_context())),
            "process",
        ),
        *(
            Backend(f"ThreadPoolExecutor-{n}", "peer", _threads(n), "thread", dedicated=True)
            for n in (4, 32, 256)
        ),
        Backend("multiprocessing.Pool", "peer", MultiprocessingPoolRunner, "process"),
        Backend("joblib", "peer", JoblibRunner, "process", module="joblib"),
        Backend("loky", "peer", LokyRunner, "process", module="loky"),
        Backend("mpire", "peer", MpireRunner, "process", module="mpire"),
        Backend("pebble", "peer", PebbleRunner, "process", module="pebble"),
        Backend("dask", "peer", DaskRunner, "process", "distributed", quick=False),
    ]
}
