"""Large buffers through shared memory: equal values, small pipe messages,
read-only arguments, one copy per map or share(), and nothing left behind."""

from __future__ import annotations

import gc
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pytest

import concur
from concur import SerializationError
from concur.auto import release_warm

SCRIPTS = Path(__file__).parent / "scripts"
MB = 1 << 20


def memfds(pid: int | str = "self") -> list[str]:
    """The concur shared-memory segments a process holds open."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("/memfd:concur-"):
            found.append(link)
    return found


def memfd_bytes() -> int:
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:concur-"):
                total += os.stat(f"/proc/self/fd/{fd}").st_size
        except OSError:
            continue
    return total


def rchar(pid: int | str = "self") -> int:
    """Bytes the process has read with read() and friends (pipes included)."""
    with open(f"/proc/{pid}/io") as fh:
        fields = dict(line.split(": ") for line in fh)
    return int(fields["rchar"])


def total(array: np.ndarray) -> float:
    return float(array.sum())


def first_of(pair: dict) -> float:
    return float(pair["a"][0] + pair["b"][-1])


def ones(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.uint8)


def pair_of(n: int) -> tuple[np.ndarray, list[int]]:
    return np.arange(n, dtype=np.int64), [n]


def write_into(array: np.ndarray) -> None:
    array[0] = 1


def write_a(pair: dict) -> None:
    pair["a"][0] = 1


def slow_total(array: np.ndarray) -> float:
    time.sleep(0.2)
    return float(array.sum())


def crash(array: np.ndarray) -> None:
    os._exit(3)


def sleep_on(array: np.ndarray) -> None:
    time.sleep(30)


def wait_until(check, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def no_memfds_left() -> bool:
    gc.collect()
    return not memfds()


@pytest.fixture
def pool():
    with concur.ProcessPool(2) as pool:
        yield pool


def test_large_arguments_and_results_equal_serial(start_method):
    a = np.arange(3 * MB, dtype=np.int64)
    pairs = [{"a": a * i, "b": a + i} for i in range(4)]
    sizes = [2 * MB, 10, 3 * MB]
    with concur.ProcessPool(2, mp_context=start_method) as pool:
        assert pool.submit(total, a).result() == total(a)
        assert list(pool.map(first_of, pairs)) == [first_of(p) for p in pairs]
        arrays = list(pool.map(ones, sizes))
        got, tail = pool.submit(pair_of, 2 * MB).result()
    assert all(np.array_equal(x, ones(n)) for x, n in zip(arrays, sizes, strict=True))
    assert np.array_equal(got, np.arange(2 * MB, dtype=np.int64)) and tail == [2 * MB]
    del arrays, got
    assert no_memfds_left()


def test_the_pipe_carries_a_small_message_for_a_large_argument(pool):
    list(pool.map(total, [np.ones(4)] * 4))  # both workers started and warm
    pids = [w.pid for w in pool.workers()]
    big = np.ones(80 * MB, dtype=np.uint8)
    before = {pid: rchar(pid) for pid in pids}
    assert pool.submit(total, big).result() == 80 * MB
    read = sum(rchar(pid) - before[pid] for pid in pids)
    assert read < 64 * 1024, f"the workers read {read} bytes for an 80 MB argument"
    # The same count sees data that does go through the pipe (a str stays in the pickle).
    before = {pid: rchar(pid) for pid in pids}
    assert pool.submit(len, "x" * (8 * MB)).result() == 8 * MB
    assert sum(rchar(pid) - before[pid] for pid in pids) >= 8 * MB


def kind_and_sum(data) -> tuple[str, int]:
    if isinstance(data, bytearray):
        data[0] = 0  # the worker's own copy: writable
    return type(data).__name__, sum(data[:16]) + len(data)


def make_bytes(n: int) -> bytes:
    return b"\x01" * n


def test_large_bytes_travel_through_shared_memory_both_ways(pool):
    # pickle keeps bytes and bytearray in the pickle and refuses memoryview;
    # large ones in a task's arguments or result go out of band all the same.
    list(pool.map(total, [np.ones(4)] * 4))
    pids = [w.pid for w in pool.workers()]
    big = b"\x01" * (40 * MB)
    cases = [
        (big, ("bytes", 16 + 40 * MB)),
        (bytearray(big), ("bytearray", 15 + 40 * MB)),
        (memoryview(big), ("bytes", 16 + 40 * MB)),  # arrives as bytes
    ]
    for argument, expected in cases:
        before = {pid: rchar(pid) for pid in pids}
        assert pool.submit(kind_and_sum, argument).result() == expected
        read = sum(rchar(pid) - before[pid] for pid in pids)
        assert read < 64 * 1024, f"the workers read {read} bytes for {type(argument).__name__}"
    nested = pool.submit(lambda pair: [len(x) for x in pair[1]["k"]], (1, {"k": [big, big]}))
    assert nested.result() == [40 * MB, 40 * MB]
    before = rchar()
    result = pool.submit(make_bytes, 30 * MB).result()
    assert rchar() - before < 1 * MB
    assert type(result) is bytes and len(result) == 30 * MB and result[-1] == 1
    del result
    wait_until(no_memfds_left)


def test_the_pipe_carries_a_small_message_for_a_large_result(pool):
    pool.submit(ones, 10).result()
    before = rchar()
    result = pool.submit(ones, 50 * MB).result()
    read = rchar() - before
    assert result.shape == (50 * MB,) and int(result[-1]) == 1
    assert read < 1 * MB, f"the caller read {read} bytes for a 50 MB result"
    result[0] = 7  # a result is the caller's own: writable
    assert int(result[0]) == 7 and int(result.sum()) == 50 * MB + 6


def frame_of(n: int) -> pd.DataFrame:
    return pd.DataFrame({"a": np.arange(n, dtype=np.int64), "b": np.ones(n)})


def table_of(n: int) -> pa.Table:
    return pa.table({"a": pa.array(np.arange(n, dtype=np.int64))})


def column_total(data: pd.DataFrame | pa.Table) -> int:
    return int(np.asarray(data["a"]).sum())


@pytest.mark.parametrize("make", [frame_of, table_of], ids=["pandas", "arrow"])
def test_data_frames_and_arrow_tables_travel_through_shared_memory(pool, make):
    column_total(pool.submit(make, 10).result())  # imports done
    before = rchar()
    data = pool.submit(make, 4 * MB).result()  # 32 MB a column
    assert rchar() - before < 1 * MB
    before = rchar()
    assert pool.submit(column_total, data).result() == column_total(make(4 * MB))
    assert rchar() - before < 1 * MB
    del data
    wait_until(no_memfds_left)


def test_arguments_are_read_only_in_workers(pool):
    with pytest.raises(ValueError, match="read-only"):
        pool.submit(write_into, np.zeros(2 * MB, dtype=np.uint8)).result()
    small = np.zeros(10, dtype=np.uint8)  # below the threshold: an ordinary copy
    assert pool.submit(write_into, small).result() is None


def test_a_map_places_an_argument_sent_to_every_task_once(pool):
    big = np.ones(8 * MB, dtype=np.uint8)
    results = pool.map(slow_total, [big] * 16, chunksize=1)
    held = memfd_bytes()  # the tasks are still queued or running
    assert len(memfds()) == 1 and big.nbytes <= held < big.nbytes + 64 * 1024, held
    assert list(results) == [float(big.nbytes)] * 16
    wait_until(no_memfds_left)


def test_an_imap_places_an_argument_sent_to_every_task_once(pool):
    big = np.ones(8 * MB, dtype=np.uint8)
    results = pool.imap(slow_total, [big] * 12, chunksize=1)
    seen = []
    for value in results:
        seen.append(len(memfds()))  # later tasks were submitted meanwhile
        assert value == float(big.nbytes)
    assert len(seen) == 12 and max(seen) == 1, seen
    wait_until(no_memfds_left)


def test_auto_on_processes_places_an_argument_sent_to_every_task_once():
    big = np.ones(8 * MB, dtype=np.uint8)
    seen = []
    for value in concur.imap(slow_total, [big] * 8, backend="process", workers=2):
        seen.append(len(memfds()))
        assert value == float(big.nbytes)
    assert max(seen) == 1, seen
    release_warm()
    wait_until(no_memfds_left)


def first_byte(array: np.ndarray) -> int:
    return int(array[0])


def refilled(count: int):
    buffer = np.zeros(2 * MB, dtype=np.uint8)
    for i in range(count):
        buffer[:] = i  # one buffer, new contents for each item
        yield buffer


def test_an_imap_sends_a_refilled_buffer_again(pool):
    # A generator may yield one buffer refilled: identity does not say the
    # data is the same, so only input held whole is placed once. (Chunks of
    # more than one item read ahead, so such a generator needs chunksize=1.)
    assert list(pool.imap(first_byte, refilled(6), chunksize=1)) == list(range(6))
    wait_until(no_memfds_left)


def test_an_imap_over_many_arrays_holds_only_those_in_flight(pool):
    # Where an imap placed each array is remembered while tasks that use it
    # are in flight, not to the end of the input.
    # The tasks sleep, so some are in flight (holding their arrays' shared
    # memory) whenever a result is taken.
    arrays = [np.full(4 * MB, i % 7, dtype=np.uint8) for i in range(12)]
    peak = 0
    for i, value in enumerate(pool.imap(slow_total, arrays, chunksize=1)):
        assert value == float((i % 7) * 4 * MB)
        gc.collect()
        peak = max(peak, memfd_bytes())
    assert 0 < peak <= 6 * 4 * MB + MB, peak  # the 4 in flight, and one settling; not 12
    wait_until(no_memfds_left)


def test_a_shared_handle_is_written_once_and_received_as_the_object(pool):
    data = {"a": np.arange(2 * MB, dtype=np.int64), "b": np.ones(3)}
    with concur.share(data) as shared:
        assert len(memfds()) == 1
        futures = [pool.submit(first_of, shared) for _ in range(8)]
        assert list(pool.map(first_of, [shared] * 8)) == [first_of(data)] * 8
        assert [f.result() for f in futures] == [first_of(data)] * 8
        assert len(memfds()) == 1
        with pytest.raises(ValueError, match="read-only"):
            pool.submit(write_a, shared).result()
        assert shared.value is data
    with pytest.raises(SerializationError, match="closed"):
        pool.submit(first_of, shared).result()
    wait_until(no_memfds_left)


def test_a_shared_handle_outlives_close_until_its_tasks_are_done(pool):
    shared = concur.share(np.ones(4 * MB, dtype=np.uint8))
    future = pool.submit(slow_total, shared)
    shared.close()
    assert future.result() == 4 * MB
    del future
    wait_until(no_memfds_left)


def test_a_worker_lets_go_of_its_result_once_the_caller_mapped_it(pool):
    result = pool.submit(ones, 4 * MB).result()
    pids = [w.pid for w in pool.workers()]
    wait_until(lambda: not any(memfds(pid) for pid in pids))
    assert int(result.sum()) == 4 * MB
    del result
    assert no_memfds_left()


def test_nothing_is_left_after_a_crash_mid_task(pool):
    with pytest.raises(concur.WorkerCrashed):
        pool.submit(crash, np.ones(4 * MB, dtype=np.uint8)).result()
    assert pool.submit(total, np.ones(4 * MB)).result() == 4 * MB
    wait_until(no_memfds_left)


def test_nothing_is_left_after_a_time_limit():
    # The limit leaves the replacement worker time to import numpy for the
    # second task on a loaded machine.
    with concur.ProcessPool(1, task_timeout=2.0) as pool:
        with pytest.raises(concur.TaskTimeout):
            pool.submit(sleep_on, np.ones(4 * MB, dtype=np.uint8)).result()
        assert pool.submit(total, np.ones(4 * MB)).result() == 4 * MB
    wait_until(no_memfds_left)


def test_a_retiring_worker_waits_until_its_result_is_mapped():
    with concur.ProcessPool(1, max_tasks_per_child=1) as pool:
        results = [pool.submit(ones, 3 * MB).result() for _ in range(3)]
    assert all(int(r.sum()) == 3 * MB for r in results)
    del results
    assert no_memfds_left()


def test_a_result_larger_than_free_memory_fails_its_task_only(pool):
    size = max(64 << 30, 2 * psutil.virtual_memory().available)
    with pytest.raises(SerializationError, match="shared memory needed"):
        pool.submit(_sparse_view, size).result()
    assert pool.submit(total, np.ones(4 * MB)).result() == 4 * MB


def _sparse_view(size: int) -> np.ndarray:
    """An array over an empty memory file: larger than memory, costs none
    (no page of it is ever touched)."""
    fd = os.memfd_create("sparse-test")
    try:
        os.ftruncate(fd, size)
        view = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    return np.frombuffer(view, dtype=np.uint8)


def test_spawn_sends_a_large_argument_through_shared_memory():
    big = np.arange(2 * MB, dtype=np.int64)
    worker = concur.spawn(total, big)
    assert worker.result(timeout=30) == total(big)
    worker.join()
    del worker
    assert no_memfds_left()


@pytest.mark.parametrize("start_method", ["forkserver", "fork", "spawn"])
def test_spawn_returns_a_large_result_through_shared_memory(start_method):
    concur.spawn(ones, 10, mp_context=start_method).result(timeout=30)  # imports done
    worker = concur.spawn(ones, 50 * MB, mp_context=start_method)
    # Under fork a child started next inherits the parent's end of the first
    # one's "mapped" pipe: the first must still hear that its result was mapped.
    other = concur.spawn(time.sleep, 30, mp_context=start_method)
    # This thread's reads: the process's count takes in the reads of the
    # children it reaps (a spawned interpreter's imports).
    before = rchar("thread-self")
    result = worker.result(timeout=30)
    read = rchar("thread-self") - before
    assert result.shape == (50 * MB,) and int(result.sum()) == 50 * MB
    assert read < 1 * MB, f"the parent read {read} bytes for a 50 MB result"
    result[0] = 7  # the parent's own copy-on-write mapping: writable
    assert int(result.sum()) == 50 * MB + 6
    worker.join(5)  # the child exits once its result is mapped
    assert worker.exitcode == 0
    other.kill()
    other.join(5)
    del result, worker
    wait_until(no_memfds_left)


def test_spawn_of_a_large_result_no_one_reads_leaves_nothing():
    worker = concur.spawn(ones, 8 * MB)
    pid = worker.pid
    wait_until(lambda: bool(memfds(pid)))  # the child holds its result's memory
    worker.kill()
    worker.join(10)
    del worker
    wait_until(no_memfds_left)


def _holders(parent: int) -> list[str]:
    """Every process that holds or maps a segment the parent made."""
    name = f"memfd:concur-{parent}"
    found = []
    for proc in psutil.process_iter():
        try:
            with open(f"/proc/{proc.pid}/maps") as fh:
                if name in fh.read():
                    found.append(f"{proc.pid} maps it")
            if any(link.startswith("/" + name) for link in memfds(proc.pid)):
                found.append(f"{proc.pid} holds it")
        except (OSError, psutil.Error):
            continue
    return found


def test_nothing_is_left_after_the_parent_is_sigkilled(tmp_path):
    shm_before = set(os.listdir("/dev/shm"))
    marker = str(tmp_path / "running")
    parent = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "shm_then_wait.py"), marker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = parent.stdout.readline()
        workers = [int(pid) for pid in line.split()]
        assert len(workers) == 2, (line, parent.stderr.read() if parent.poll() else "")
        child = int(parent.stdout.readline())
        held = _holders(parent.pid)
        assert any(str(parent.pid) in h for h in held) and len(held) >= 3, held
        assert _holders(child) == [f"{child} holds it"]
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 5.0
        while _holders(parent.pid) or _holders(child):
            assert time.monotonic() < deadline, (_holders(parent.pid), _holders(child))
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        parent.stderr.close()
    # Other programs on this machine may add their own entries meanwhile.
    new = set(os.listdir("/dev/shm")) - shm_before
    assert not [n for n in new if "concur" in n or str(parent.pid) in n], new


def test_a_thread_task_receives_the_shared_object_itself():
    data = {"a": np.arange(2 * MB, dtype=np.int64), "b": np.ones(3)}
    with concur.share(data) as shared, concur.ThreadPool(2) as pool:
        assert pool.submit(lambda d: d is data, shared).result()
        assert pool.submit(lambda *, d: d is data, d=shared).result()
        assert list(pool.map(first_of, [shared] * 4)) == [first_of(data)] * 4


def _maps_ours(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as fh:
        return f"memfd:concur-{os.getpid()}" in fh.read()


def test_an_idle_worker_maps_nothing(pool):
    big = np.ones(4 * MB // 8)
    assert list(pool.map(total, [big] * 8, chunksize=1)) == [float(big.size)] * 8
    pids = [w.pid for w in pool.workers()]
    wait_until(lambda: not any(_maps_ours(pid) for pid in pids))
