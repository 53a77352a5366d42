"""Where concur must behave like concurrent.futures so it can be dropped in.

Each test is a regression test for a gap found against the standard library's
executors (or against what concur's own messages promise): a pool used after
os.fork(), __main__ state, multiprocessing objects in initargs, per-item
max_tasks_per_child, lost tasks, BaseException in the supervisor, retained
references, exceptions that cannot be printed, shutdown after a timeout, and
error messages.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import wait
from pathlib import Path

import pytest

import concur

SCRIPTS = Path(__file__).parent / "scripts"
POOLS = ["thread", "process-fork", "process-forkserver", "process-spawn"]


def make_pool(kind: str, **kwargs):
    if kind == "thread":
        return concur.ThreadPool(**kwargs)
    method = kind.split("-", 1)[1] if "-" in kind else None
    return concur.ProcessPool(mp_context=method, **kwargs)


# -- tasks (module level, so every start method can import them) ------------


def slow_identity(x, delay=0.0):
    time.sleep(delay)
    return x


def getpid(_=None):
    return os.getpid()


def wait_for_file(path, value):
    """Return ``value`` once ``path`` exists (10 s at most)."""
    deadline = time.monotonic() + 10
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


# -- 1. a pool used in a child made by os.fork() ------------------------------


def _read_report(fd: int, timeout: float) -> dict:
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the forked child reported nothing in {timeout} s: {data!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data.decode())


def _reap(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_pool_used_in_a_forked_child_refuses_and_the_parent_pool_is_untouched(start_method):
    with concur.ProcessPool(1, mp_context=start_method) as pool:
        assert pool.submit(slow_identity, "warm").result(timeout=30) == "warm"
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what submit did, then leave at once
            try:
                os.close(r)
                try:
                    pool.submit(slow_identity, "child", 0.5)
                    report = {"raised": None, "runtime_error": False, "message": ""}
                except BaseException as exc:
                    report = {
                        "raised": type(exc).__name__,
                        "runtime_error": isinstance(exc, RuntimeError),
                        "message": str(exc),
                    }
                os.write(w, json.dumps(report).encode())
            finally:
                os._exit(0)
        os.close(w)
        try:
            report = _read_report(r, timeout=10)
        finally:
            os.close(r)
            _reap(pid)
        a = pool.submit(slow_identity, "A", 0.05)
        b = pool.submit(slow_identity, "B", 0.05)
        results = (a.result(timeout=10), b.result(timeout=10))
    assert report["runtime_error"], (
        f"submit in a forked child did not refuse: {report}; the parent then got {results}"
    )
    assert "fork" in report["message"].lower(), report
    assert results == ("A", "B"), "the child's task went down the parent's worker pipe"


# -- 2. initializer and task state in globals of __main__ ---------------------


@functools.cache
def _main_state(start_method: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "main_state.py"), start_method],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_initializer_state_is_seen_by_main_functions(start_method):
    state = _main_state(start_method)
    assert state["submit"] == "loaded", state
    assert state["map"] == ["loaded"] * 4, state


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_initializer_state_is_seen_by_a_main_lambda(start_method):
    state = _main_state(start_method)
    assert state["lambda"] == "loaded", state


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_a_main_global_set_by_a_task_persists_in_its_worker(start_method):
    state = _main_state(start_method)
    assert state["counter"] == [1, 2, 3], state


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_main_functions_never_see_the_bootstrap_modules_names(start_method, tmp_path):
    # A spawned or fork-server worker's own __main__ is multiprocessing's
    # bootstrap, which defines `main` / `spawn_main`: the script's must win.
    script = tmp_path / "names.py"
    script.write_text(
        "import concur\n"
        "def main():\n"
        "    return 'the script main'\n"
        "def spawn_main():\n"
        "    return 'the script spawn_main'\n"
        "def task(_):\n"
        "    return main(), spawn_main()\n"
        "if __name__ == '__main__':\n"
        f"    with concur.ProcessPool(1, mp_context={start_method!r}) as pool:\n"
        "        print(pool.submit(task, 1).result(timeout=30))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "('the script main', 'the script spawn_main')", out.stderr


# -- 3. multiprocessing objects in initargs -----------------------------------

_HELD: dict[str, object] = {}


def _hold(obj):
    _HELD["obj"] = obj


def _queue_put(x):
    _HELD["obj"].put(x)
    return True


def _lock_try():
    lock = _HELD["obj"]
    got = lock.acquire(False)
    if got:
        lock.release()
    return got


def _event_set():
    _HELD["obj"].set()
    return True


def _value_set(x):
    _HELD["obj"].value = x
    return True


def _array_set(i, x):
    _HELD["obj"][i] = x
    return True


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_initargs_can_hold_a_queue(start_method):
    ctx = multiprocessing.get_context(start_method)
    queue = ctx.Queue()
    try:
        with concur.ProcessPool(1, mp_context=ctx, initializer=_hold, initargs=(queue,)) as pool:
            assert pool.submit(_queue_put, "hello").result(timeout=30) is True
            assert queue.get(timeout=10) == "hello"
    finally:
        queue.close()
        queue.join_thread()


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_initargs_can_hold_a_lock(start_method):
    ctx = multiprocessing.get_context(start_method)
    lock = ctx.Lock()
    with concur.ProcessPool(1, mp_context=ctx, initializer=_hold, initargs=(lock,)) as pool:
        assert pool.submit(_lock_try).result(timeout=30) is True
        with lock:  # the worker holds the same lock: now it cannot take it
            assert pool.submit(_lock_try).result(timeout=30) is False


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_initargs_can_hold_an_event(start_method):
    ctx = multiprocessing.get_context(start_method)
    event = ctx.Event()
    with concur.ProcessPool(1, mp_context=ctx, initializer=_hold, initargs=(event,)) as pool:
        assert pool.submit(_event_set).result(timeout=30) is True
        assert event.wait(10)


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_initargs_can_hold_a_value_and_an_array(start_method):
    ctx = multiprocessing.get_context(start_method)
    value = ctx.Value("i", 0)
    array = ctx.Array("i", [0, 0, 0])
    with concur.ProcessPool(1, mp_context=ctx, initializer=_hold, initargs=(value,)) as pool:
        assert pool.submit(_value_set, 42).result(timeout=30) is True
    assert value.value == 42
    with concur.ProcessPool(1, mp_context=ctx, initializer=_hold, initargs=(array,)) as pool:
        assert pool.submit(_array_set, 1, 7).result(timeout=30) is True
    assert list(array) == [0, 7, 0]


def _touch_everything(pid):
    queue, lock, event, value, array, shared = _HELD["obj"]
    with lock:
        queue.put(pid)
        value.value = pid
        array[0] = pid
        shared["pid"] = pid
    event.set()
    return True


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_initargs_can_hold_every_kind_of_multiprocessing_object(start_method):
    # Queue, Lock, Event, Value, Array and a Manager().dict() proxy together,
    # as ProcessPoolExecutor(initargs=...) takes them.
    ctx = multiprocessing.get_context(start_method)
    queue = ctx.Queue()
    try:
        with ctx.Manager() as manager:
            shared = manager.dict()
            objects = (queue, ctx.Lock(), ctx.Event(), ctx.Value("i", 0), ctx.Array("i", 2), shared)
            with concur.ProcessPool(
                1, mp_context=ctx, initializer=_hold, initargs=(objects,)
            ) as pool:
                assert pool.submit(_touch_everything, 1234).result(timeout=30) is True
            assert queue.get(timeout=10) == 1234
            assert objects[2].wait(10)
            assert objects[3].value == 1234
            assert list(objects[4]) == [1234, 0]
            assert dict(shared) == {"pid": 1234}
    finally:
        queue.close()
        queue.join_thread()


# -- 4. max_tasks_per_child counts items, as the standard library does --------


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_max_tasks_per_child_counts_each_item_of_map(start_method):
    with concur.ProcessPool(2, mp_context=start_method, max_tasks_per_child=1) as pool:
        pids = list(pool.map(getpid, range(20), timeout=60))
    assert len(pids) == 20
    assert len(set(pids)) == 20, f"{len(set(pids))} workers ran 20 items with max_tasks_per_child=1"


# -- 5. a retiring worker must not take an innocent task with it --------------


def _refuse_to_load():
    raise ValueError("this object cannot be rebuilt in the caller")


class LoadsBadly:
    def __reduce__(self):
        return (_refuse_to_load, ())


def make_loads_badly():
    return LoadsBadly()


def test_a_retiring_worker_whose_result_cannot_be_loaded_keeps_the_next_task():
    with concur.ProcessPool(1, max_tasks_per_child=1) as pool:
        bad = pool.submit(make_loads_badly)
        innocent = pool.submit(slow_identity, "innocent")
        with pytest.raises(Exception):  # noqa: B017, PT011 - any error will do
            bad.result(timeout=20)
        assert innocent.result(timeout=20) == "innocent"


def _log_to_queue_then_fail(log_queue):
    import logging.handlers

    logger = logging.getLogger("concurrent.futures")
    logger.addHandler(logging.handlers.QueueHandler(log_queue))
    logger.propagate = False
    raise ValueError("error in initializer")


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_a_failed_initializer_has_flushed_its_queue_when_the_pool_is_broken(start_method):
    # The record travels through a multiprocessing queue whose feeder thread
    # flushes as the worker exits: the pool must break only after that exit.
    ctx = multiprocessing.get_context(start_method)
    log_queue = ctx.Queue()
    pool = concur.ProcessPool(
        1, mp_context=ctx, initializer=_log_to_queue_then_fail, initargs=(log_queue,)
    )
    with pytest.raises(concur.ProcessPoolBroken, match="error in initializer"):
        pool.submit(getpid).result(timeout=30)
    pool.shutdown()
    assert "ValueError: error in initializer" in log_queue.get_nowait().getMessage()
    log_queue.close()
    log_queue.join_thread()


# -- 6. BaseException in the supervisor ---------------------------------------


class ExitsWhenLoaded(Exception):
    def __reduce__(self):
        return (sys.exit, (3,))


def raise_exits_when_loaded():
    raise ExitsWhenLoaded("unpickling me raises SystemExit")


def test_an_exception_that_raises_systemexit_when_loaded_does_not_break_the_pool():
    with concur.ProcessPool(1) as pool:
        future = pool.submit(raise_exits_when_loaded)
        with pytest.raises(BaseException):  # noqa: B017, PT011 - anything but a hang
            future.result(timeout=10)
        assert pool.submit(slow_identity, "after").result(timeout=10) == "after"


def raise_runtime_error():
    raise RuntimeError(123)  # the line the caller must see


def test_the_cause_is_the_standard_librarys_remote_traceback():
    import concurrent.futures.process

    with concur.ProcessPool(1) as pool, pytest.raises(RuntimeError) as caught:
        pool.submit(raise_runtime_error).result(timeout=10)
    cause = caught.value.__cause__
    assert type(cause) is concurrent.futures.process._RemoteTraceback
    assert cause is not None and "raise RuntimeError(123)  # the line" in cause.tb
    assert str(cause).startswith('\n"""\nTraceback (most recent call last):')


@pytest.mark.parametrize("pool", ["ThreadPool", "ProcessPool"])
def test_submit_from_an_atexit_handler_prints_the_standard_librarys_error(pool):
    script = (
        "import atexit, concur\n"
        "@atexit.register\n"
        "def last():\n"
        "    pool.submit(id, None)\n"
        "if __name__ == '__main__':\n"
        f"    pool = concur.{pool}(2)\n"
        "    pool.submit(id, 42).result()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert "RuntimeError: cannot schedule new futures after interpreter shutdown" in proc.stderr


# -- functions sent by value: pickled once, and still what the caller has ----


def _by_value(source: str, **names):
    """A function from a module no worker can import: it travels by value."""
    namespace = {"__name__": "concur_test_unimportable", **names}
    exec(source, namespace)
    return namespace["f"]


@pytest.fixture
def cloudpickled(monkeypatch):
    """What this process gives ``cloudpickle.dumps``, in order."""
    import cloudpickle

    pickled = []
    real = cloudpickle.dumps

    def counting(obj, *args, **kwargs):
        pickled.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(cloudpickle, "dumps", counting)
    return pickled


def test_a_plain_function_sent_by_value_is_pickled_once(cloudpickled):
    f = _by_value("import math\ndef f(x):\n    return math.floor(x * SCALE)\n", SCALE=2.5)
    with concur.ProcessPool(1) as pool:
        assert [pool.submit(f, i).result(timeout=10) for i in range(5)] == [0, 2, 5, 7, 10]
    assert [obj for obj in cloudpickled if obj is f] == [f]


def test_the_arguments_of_a_main_function_go_through_the_c_pickler(cloudpickled):
    """A function of ``__main__`` travels by value, and its bytes name
    ``__main__``: they travel beside the arguments' pickle, so the arguments
    need no cloudpickle (ten times the C pickler's cost per call)."""
    f = _by_value("def f(x, *, k=0):\n    return x + k\n", __name__="__main__")
    with concur.ProcessPool(1) as pool:
        assert [pool.submit(f, i, k=1).result(timeout=10) for i in range(5)] == [1, 2, 3, 4, 5]
        assert list(pool.map(f, range(6), chunksize=3)) == list(range(6))
    # the function only (once for submit, once for map), never a message
    assert cloudpickled and all(obj is f for obj in cloudpickled), cloudpickled


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    return LATER\n", 5),
        # read in nested code (a comprehension's own code object)
        ("def f():\n    return [LATER for _ in range(1)]\n", [5]),
    ],
)
def test_a_function_sent_by_value_sees_a_global_defined_after_its_first_call(source, expected):
    f = _by_value(source)
    with concur.ProcessPool(1) as pool:
        with pytest.raises(NameError):
            pool.submit(f).result(timeout=10)
        f.__globals__["LATER"] = 5
        assert pool.submit(f).result(timeout=10) == expected


def test_new_workers_see_the_callers_globals_as_they_are_now():
    # One task per worker: each call meets a fresh worker, which must get
    # the values of now, rebound or mutated, as without any caching.
    f = _by_value("def f():\n    return (SCALE, CONFIG.get('k'))\n", SCALE=1, CONFIG={})
    with concur.ProcessPool(1, max_tasks_per_child=1) as pool:
        assert pool.submit(f).result(timeout=10) == (1, None)
        f.__globals__["SCALE"] = 2
        f.__globals__["CONFIG"]["k"] = "v"
        assert pool.submit(f).result(timeout=10) == (2, "v")


def test_new_defaults_and_closure_values_reach_the_worker():
    f = _by_value("def f(x=1):\n    return x\n")
    k = 1

    def closure():
        return k

    with concur.ProcessPool(1) as pool:
        assert pool.submit(f).result(timeout=10) == 1
        assert pool.submit(closure).result(timeout=10) == 1
        f.__defaults__ = (2,)
        k = 2
        assert pool.submit(f).result(timeout=10) == 2
        assert pool.submit(closure).result(timeout=10) == 2


class ExitsWhenPickled:
    def __reduce__(self):
        sys.exit(4)


def return_exits_when_pickled():
    return ExitsWhenPickled()


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_a_result_that_raises_systemexit_when_pickled_fails_its_task_not_the_worker(start_method):
    # As with ProcessPoolExecutor, the SystemExit reaches the caller; the
    # worker that raised it while pickling goes on to the next task.
    with concur.ProcessPool(1, mp_context=multiprocessing.get_context(start_method)) as pool:
        before = pool.submit(getpid).result(timeout=10)
        with pytest.raises(SystemExit) as caught:
            pool.submit(return_exits_when_pickled).result(timeout=10)
        # args, not .code: once distributed is imported (tblib's reducers for
        # every exception class), a rebuilt SystemExit keeps its args only.
        assert caught.value.args == (4,)
        assert pool.submit(getpid).result(timeout=10) == before


def _exit_in_callback(future):
    sys.exit(4)


@pytest.mark.parametrize("pool_kind", ["thread", "process"])
def test_a_done_callback_calling_sys_exit_does_not_stop_the_pool(pool_kind, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="concurrent.futures")
    gate = tmp_path / "go"
    pool = make_pool(pool_kind, max_workers=1)
    try:
        first = pool.submit(wait_for_file, str(gate), "first")
        first.add_done_callback(_exit_in_callback)  # attached before the task can end
        gate.touch()
        wait([first], timeout=10)
        assert first.done()
        assert first.result(timeout=0) == "first"
        later = [pool.submit(slow_identity, i) for i in range(3)]
        assert [f.result(timeout=5) for f in later] == [0, 1, 2]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    logged = [
        r
        for r in caplog.records
        if r.name.startswith("concurrent.futures") and r.levelno >= logging.ERROR
    ]
    assert logged, "the callback's exception was not logged on the concurrent.futures logger"


# -- 7. results and arguments are not retained ---------------------------------


class Dummy:
    def __init__(self, value):
        self.value = value

    def my_method(self):
        return self.value


def make_dummy_object(value):
    return Dummy(value)


def _collected(ref: weakref.ref, within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        gc.collect()
        if ref() is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@pytest.mark.parametrize("pool_kind", POOLS)
def test_free_reference(pool_kind):
    # CPython's test_free_reference (issue #14406): the result iterator keeps
    # no reference to a result it has yielded.
    pool = make_pool(pool_kind, max_workers=2)
    try:
        for obj in pool.map(make_dummy_object, range(10)):
            ref = weakref.ref(obj)
            del obj
            assert _collected(ref, within=1.0), "map still holds a result it yielded"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("pool_kind", POOLS)
def test_no_stale_references(pool_kind):
    # CPython's test_no_stale_references (issue #16284), with the future kept.
    pool = make_pool(pool_kind, max_workers=2)
    try:
        obj = Dummy(5)
        collected = threading.Event()
        ref = weakref.ref(obj, lambda _: collected.set())
        future = pool.submit(obj.my_method)
        assert future.result(timeout=30) == 5
        del obj
        deadline = time.monotonic() + 3.0
        while not collected.is_set() and time.monotonic() < deadline:
            gc.collect()
            collected.wait(0.1)
        assert collected.is_set(), "the pool still holds the submitted bound method's object"
        assert ref() is None
        assert future.done()  # the future is still referenced here
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- 13. an exception whose __str__ raises -------------------------------------


class UnprintableError(Exception):
    def __str__(self):
        raise RuntimeError("this exception cannot be turned into a string")


def raise_unprintable():
    raise UnprintableError("hidden")


def test_an_exception_whose_str_raises_arrives_and_the_worker_goes_on():
    with concur.ProcessPool(1) as pool:
        before = pool.submit(getpid).result(timeout=30)
        future = pool.submit(raise_unprintable)
        error = future.exception(timeout=10)
        assert isinstance(error, (concur.RemoteError, UnprintableError)), repr(type(error))
        after = pool.submit(getpid).result(timeout=10)
    assert after == before, "the worker died sending back an exception it could not print"


# -- 15. shutdown right after a timeout, with a worker that ignores SIGTERM ----


def ignore_sigterm_and_sleep(seconds):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)
    return "woke"


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_shutdown_right_after_a_timeout_does_not_wait_for_a_worker_ignoring_sigterm(
    start_method,
):
    pool = concur.ProcessPool(1, mp_context=start_method)
    try:
        pool.submit(getpid).result(timeout=30)  # started: the task begins at once
        future = pool.options(timeout=0.3).submit(ignore_sigterm_and_sleep, 30)
        with pytest.raises(concur.TaskTimeout):
            future.result(timeout=10)
        started = time.monotonic()
        pool.shutdown()
        took = time.monotonic() - started
    finally:
        pool.shutdown()
    assert took < 1.0, f"shutdown took {took:.2f} s after the timeout (the kill is due in 0.2 s)"


# -- 18. error messages tell the truth ----------------------------------------


class HTTPError(Exception):
    def __init__(self, url, status):
        super().__init__(f"{url} returned {status}")
        self.url = url
        self.status = status


def raise_http_error(url, status):
    raise HTTPError(url, status)


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_an_importable_exception_with_its_own_init_keeps_its_type(start_method):
    with concur.ProcessPool(1, mp_context=start_method) as pool:
        future = pool.submit(raise_http_error, "http://x", 404)
        error = future.exception(timeout=30)
    assert isinstance(error, HTTPError), f"{type(error).__name__}: {error}"
    assert error.url == "http://x"
    assert error.status == 404
    assert str(error) == "http://x returned 404"


def test_a_spawned_worker_killed_by_kill_says_so():
    worker = concur.spawn(time.sleep, 30)
    worker.kill()
    worker.join(timeout=10)
    with pytest.raises(concur.WorkerCrashed) as info:
        worker.result(timeout=10)
    message = str(info.value)
    assert "pool" not in message.lower(), message
    assert "out of memory" not in message.lower(), message
    assert "killed" in message, message
    assert "kill()" in message, message


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_given_backend_decision_does_not_say_chunks_of_zero(backend):
    results = concur.map(abs, range(-10, 10), backend=backend)
    assert results == [abs(x) for x in range(-10, 10)]
    assert results.decision is not None
    assert "chunks of 0" not in str(results.decision), str(results.decision)
