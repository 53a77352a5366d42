"""The async front on asyncio and trio: results, errors, cancellation that
kills the process worker (measured by its pid disappearing), and an event
loop that stays on time while threads block."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import psutil
import pytest

import concur
from docexamples import examples, printed

pytestmark = pytest.mark.anyio

KILL_BOUND_S = 0.5  # a cancelled process task's worker is gone within this


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"no {x}")
    return x


def report_and_sleep(path: str, seconds: float) -> str:
    """Write this worker's pid to ``path`` (the test's sign that it runs), then block."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "finished"


def blocking(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


async def pid_in(path: Path) -> int:
    """The pid a running ``report_and_sleep`` wrote."""
    with anyio.fail_after(30):
        while True:
            text = path.read_text() if path.exists() else ""
            if text:
                return int(text)
            await anyio.sleep(0.005)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def gone_after(pids: list[int], since: float) -> float:
    """Seconds from ``since`` until none of ``pids`` runs (at most 10 s of waiting)."""
    with anyio.fail_after(10):
        while any(alive(pid) for pid in pids):
            await anyio.sleep(0.002)
    return time.monotonic() - since


# -- values and errors ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "thread", "process", "inline"])
async def test_arun_returns_the_value(backend: str) -> None:
    assert await concur.arun(pow, 2, 10, backend=backend) == 1024
    assert await concur.arun(int, "ff", backend=backend, base=16) == 255


async def test_arun_in_a_process_runs_elsewhere() -> None:
    assert await concur.arun(os.getpid, backend="process") != os.getpid()


@pytest.mark.parametrize("backend", ["thread", "process"])
async def test_arun_raises_the_functions_error(backend: str) -> None:
    with pytest.raises(ValueError, match="no 3"):
        await concur.arun(fail_on_three, 3, backend=backend)


async def test_arun_past_its_timeout_is_killed(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(concur.TaskTimeout, match=r"test_async\.report_and_sleep"):
        await concur.arun(report_and_sleep, str(marker), 30, timeout=0.3)
    assert time.monotonic() - started < 10
    assert await gone_after([int(marker.read_text())], time.monotonic()) < KILL_BOUND_S


def test_without_anyio_the_error_says_what_to_install() -> None:
    hide = "import sys; sys.modules['anyio'] = None; import concur; concur.arun"
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'concur[async]'" in done.stderr


async def test_bad_backend_says_what_to_use() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        await concur.arun(abs, 1, backend="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="DaskPool"):
        concur.amap(abs, [1], backend="dask")


@pytest.mark.parametrize("backend", ["auto", "thread", "process"])
async def test_amap_ordered_and_not(backend: str) -> None:
    got = [x async for x in concur.amap(square, range(20), backend=backend)]
    assert got == [x * x for x in range(20)]
    unordered = concur.amap(square, range(20), backend=backend, ordered=False)
    assert sorted([x async for x in unordered]) == [x * x for x in range(20)]


async def test_amap_errors_raise_or_come_back() -> None:
    with pytest.raises(ValueError, match="no 3"):
        async for _ in concur.amap(fail_on_three, range(6), backend="process"):
            pass
    kept = concur.amap(fail_on_three, range(6), backend="thread", return_exceptions=True)
    got = [x async for x in kept]
    assert got[:3] == [0, 1, 2] and got[4:] == [4, 5]
    assert isinstance(got[3], ValueError)


async def test_amap_reads_endless_input_as_it_goes() -> None:
    taken = []
    async with concur.amap(square, itertools.count(), backend="thread") as results:
        async for value in results:
            taken.append(value)
            if len(taken) == 5:
                break
    assert taken == [0, 1, 4, 9, 16]


async def test_pool_amap_keeps_at_most_max_inflight_chunks_out() -> None:
    started: list[int] = []

    def note(i: int) -> int:
        started.append(i)
        return i

    with concur.ThreadPool(4) as pool:
        async with pool.amap(note, itertools.count(), chunksize=1, max_inflight=3) as results:
            async for value in results:
                if value == 4:
                    break
        await anyio.sleep(0.1)  # anything placed has had time to start
    assert 5 <= len(started) <= 5 + 3


async def test_an_amap_dropped_unfinished_cancels_what_has_not_started(tmp_path: Path) -> None:
    import gc

    paths = [str(tmp_path / f"item{i}") for i in range(3)]
    with concur.ProcessPool(1) as pool:
        results = pool.amap(report_and_sleep, paths, [0.3] * 3, chunksize=1, max_inflight=3)
        assert await results.__anext__() == "finished"  # 1 and 2 wait behind it, placed
        del results  # never closed: the garbage collector closes it
        gc.collect()
        await anyio.sleep(1.5)  # what was not cancelled has run by now
        ran = [path for path in paths if Path(path).exists()]
        assert paths[0] in ran and paths[2] not in ran, ran


POOLS = {
    "thread": lambda: concur.ThreadPool(2),
    "process": lambda: concur.ProcessPool(2),
    "auto": lambda: concur.AutoPool(2),
}


@pytest.mark.parametrize("kind", sorted(POOLS))
async def test_pool_arun_and_amap(kind: str) -> None:
    with POOLS[kind]() as pool:
        assert await pool.arun(pow, 3, 4) == 81
        assert await pool.options(timeout=30).arun(int, "10", base=2) == 2
        assert [x async for x in pool.amap(square, range(10))] == [x * x for x in range(10)]
        with pytest.raises(ValueError, match="no 3"):
            await pool.arun(fail_on_three, 3)


# -- cancellation --------------------------------------------------------------


async def test_cancelling_pool_arun_kills_the_worker_and_frees_its_slot(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    with concur.ProcessPool(1) as pool:
        async with anyio.create_task_group() as group:
            scope = anyio.CancelScope()

            async def call() -> None:
                with scope:
                    await pool.arun(report_and_sleep, str(marker), 30)

            group.start_soon(call)
            pid = await pid_in(marker)
            cancelled = time.monotonic()
            scope.cancel()
        assert await gone_after([pid], cancelled) < KILL_BOUND_S
        with anyio.fail_after(30):  # the one slot takes work again, on a new worker
            assert await pool.arun(os.getpid) != pid


async def test_a_deadline_kills_concur_arun_in_a_process(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    pids: list[int] = []

    async def watch() -> None:
        pids.append(await pid_in(marker))

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        with anyio.move_on_after(1.0) as scope:
            await concur.arun(report_and_sleep, str(marker), 30, backend="process")
    deadline = time.monotonic()
    assert scope.cancelled_caught
    assert await gone_after(pids, deadline) < KILL_BOUND_S


async def test_cancelling_amap_kills_every_running_worker(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"pid{i}") for i in range(2)]
    with concur.ProcessPool(2) as pool:
        async with anyio.create_task_group() as group:
            scope = anyio.CancelScope()

            async def iterate() -> None:
                with scope:
                    async for _ in pool.amap(report_and_sleep, paths, [30, 30], chunksize=1):
                        pass

            group.start_soon(iterate)
            pids = [await pid_in(Path(p)) for p in paths]
            cancelled = time.monotonic()
            scope.cancel()
        assert await gone_after(pids, cancelled) < KILL_BOUND_S


async def test_cancelling_autopool_arun_kills_the_process_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONCUR_BACKEND", "process")  # AutoPool sends every call to processes
    marker = tmp_path / "pid"
    with concur.AutoPool(1) as pool:
        async with anyio.create_task_group() as group:
            scope = anyio.CancelScope()

            async def call() -> None:
                with scope:
                    await pool.arun(report_and_sleep, str(marker), 30)

            group.start_soon(call)
            pid = await pid_in(marker)
            cancelled = time.monotonic()
            scope.cancel()
        assert await gone_after([pid], cancelled) < KILL_BOUND_S
        with anyio.fail_after(30):  # its one process slot takes work again, on a new worker
            assert await pool.arun(os.getpid) not in (pid, os.getpid())


async def test_a_cancelled_thread_runs_on_and_its_result_is_dropped() -> None:
    finished = threading.Event()

    def work() -> str:
        time.sleep(0.5)
        finished.set()
        return "done"

    with concur.ThreadPool(1) as pool:
        with anyio.move_on_after(0.1):
            await pool.arun(work)
        returned = time.monotonic()
        assert not finished.is_set()  # the await ended at the cancel, the thread did not
        assert await pool.arun(str, 1) == "1"  # queued behind the thread: after it ends
        assert finished.is_set()
        assert time.monotonic() - returned < 5


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_wait_for_and_task_cancel_kill_the_worker(tmp_path: Path) -> None:
    with concur.ProcessPool(2) as pool:
        marker = tmp_path / "a"
        call = pool.arun(report_and_sleep, str(marker), 30)
        waiting = asyncio.ensure_future(asyncio.wait_for(call, timeout=30))
        pid = await pid_in(marker)
        task = asyncio.ensure_future(pool.arun(report_and_sleep, str(tmp_path / "b"), 30))
        other = await pid_in(tmp_path / "b")
        cancelled = time.monotonic()
        waiting.cancel()
        task.cancel()
        for pending in (waiting, task):
            with pytest.raises(asyncio.CancelledError):
                await pending
        assert await gone_after([pid, other], cancelled) < KILL_BOUND_S


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_timeout_kills_the_worker(tmp_path: Path) -> None:
    scopes: list[asyncio.Timeout] = []

    async def bounded() -> None:
        async with asyncio.timeout(30) as scope:  # moved to now once the work runs
            scopes.append(scope)
            await pool.arun(report_and_sleep, str(tmp_path / "a"), 30)

    with concur.ProcessPool(2) as pool:
        task = asyncio.ensure_future(bounded())
        pid = await pid_in(tmp_path / "a")
        expired = time.monotonic()
        scopes[0].reschedule(asyncio.get_running_loop().time())
        with pytest.raises(TimeoutError):
            await task
        assert await gone_after([pid], expired) < KILL_BOUND_S
        assert await pool.arun(square, 3) == 9  # the pool goes on


@pytest.mark.parametrize("how", ["pool", "run"])
def test_ctrl_c_stops_the_process_an_event_loop_awaits(
    anyio_backend: str, how: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    script = Path(__file__).parent / "scripts" / "async_ctrl_c.py"
    child = subprocess.Popen(
        [sys.executable, str(script), anyio_backend, how, str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (marker.exists() and marker.read_text()):
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.01)
        worker = int(marker.read_text())
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert out == "interrupted\n", err
    assert not alive(worker)


# -- the event loop stays free ------------------------------------------------


class Ticks:
    """How late each tick of a 10 ms ticker was, beside some work."""

    def __init__(self, late: list[float], took: float) -> None:
        self.late = sorted(late)
        self.took = took  # how long the work took

    @property
    def worst(self) -> float:
        return self.late[-1]

    @property
    def p90(self) -> float:
        return self.late[int(0.9 * (len(self.late) - 1))]


async def ticker_lateness(work: object) -> Ticks:
    """Run ``work()`` beside a 10 ms ticker."""
    late: list[float] = []
    done = anyio.Event()

    async def tick() -> None:
        due = time.monotonic()
        while not done.is_set():
            due += 0.010
            await anyio.sleep(max(0.0, due - time.monotonic()))
            late.append(time.monotonic() - due)
            due = max(due, time.monotonic())

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        await anyio.sleep(0.05)  # the ticker is running
        started = time.monotonic()
        await work()  # type: ignore[operator]
        took = time.monotonic() - started
        done.set()
    return Ticks(late, took)


def assert_on_time(ticks: Ticks) -> None:
    # Nine ticks in ten within one tick of their time, and none held up for
    # the length of a call (0.3 s), as a call run on the loop holds it. (A
    # shared test machine can pause the whole process for tens of ms.)
    assert ticks.p90 < 0.010, ticks.late
    assert ticks.worst < 0.25, ticks.late
    assert ticks.took < 5.0  # side by side, not one after another (15 s)


async def test_fifty_blocking_aruns_leave_a_ticker_on_time() -> None:
    results: list[int] = []

    async def fifty() -> None:
        async with anyio.create_task_group() as calls:
            for i in range(50):
                calls.start_soon(one, i)

    async def one(i: int) -> None:
        results.append(await concur.arun(blocking, i, 0.3, backend="thread"))

    ticks = await ticker_lateness(fifty)
    assert sorted(results) == list(range(50))
    assert_on_time(ticks)


async def test_fifty_blocking_pool_aruns_leave_a_ticker_on_time() -> None:
    with concur.ThreadPool(50) as pool:

        async def fifty() -> None:
            async with anyio.create_task_group() as calls:
                for i in range(50):
                    calls.start_soon(pool.arun, blocking, i, 0.3)

        ticks = await ticker_lateness(fifty)
    assert_on_time(ticks)


async def test_inline_blocks_the_loop_as_documented() -> None:
    # The measurement above can fail: work run inline holds the ticker up.
    ticks = await ticker_lateness(lambda: concur.arun(blocking, 0, 0.3, backend="inline"))
    assert ticks.worst > 0.25


# -- docs/async.md ---------------------------------------------------------------


def test_docs_have_examples() -> None:
    assert len(examples("async.md")) == 3


@pytest.mark.parametrize("index", range(3))
def test_docs_example_prints_what_is_shown(index: int, tmp_path: Path) -> None:
    code, shown = examples("async.md")[index]
    assert printed(code, tmp_path, timeout=60) == shown


COLD_FIRST_ARUN = """
import sys, threading, anyio

loop_thread = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "concur.auto":
            here = threading.current_thread() is loop_thread[0]
            print("imported on", "the loop" if here else "a worker thread")
        return None

async def main():
    loop_thread.append(threading.current_thread())
    import concur
    assert "concur.auto" not in sys.modules
    sys.meta_path.insert(0, Watch())
    print(await concur.arun(pow, 2, 5, backend="thread"))

anyio.run(main, backend=sys.argv[1])
"""


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_the_first_arun_imports_the_engine_off_the_loops_thread(loop: str) -> None:
    """The engine is ~0.1 s of imports: made on the loop, they would hold it."""
    done = subprocess.run(
        [sys.executable, "-c", COLD_FIRST_ARUN, loop], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["imported on a worker thread", "32"], done.stdout
