"""A caller blocked in ``result()`` reads its worker's reply itself (see ``_replies``).

These tests hold the two readers of a reply pipe (the waiting caller and
the supervisor) to their rules: a reply is read once, by one of them; a
worker's death, a time limit, a cancel or a callback that waits for the
next task never leave a caller or the supervisor waiting.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import threading
import time

import pytest

import concur
from concur.errors import TaskTimeout, WorkerCrashed


def _nap(x: float) -> float:
    time.sleep(x)
    return x


def _chatty(x: int) -> int:
    logging.getLogger("concur.test.direct").warning("item %d", x)
    return x * x


def _die() -> None:
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_waiting_thread_reads_the_reply_and_runs_the_callbacks():
    # Without the caller reading its reply, the supervisor thread settles
    # the future and runs its callbacks.
    with concur.ProcessPool(1) as pool:
        pool.submit(abs, 1).result(timeout=30)  # the worker is up
        ran_in = []
        future = pool.submit(_nap, 0.3)
        future.add_done_callback(lambda f: ran_in.append(threading.current_thread()))
        assert future.result(timeout=30) == 0.3
        assert ran_in == [threading.main_thread()]


def test_a_reply_nobody_waits_for_is_read_by_the_supervisor():
    with concur.ProcessPool(1) as pool:
        pool.submit(abs, 1).result(timeout=30)
        done = threading.Event()
        ran_in = []

        def note(f: concurrent.futures.Future) -> None:
            ran_in.append(threading.current_thread())
            done.set()

        pool.submit(_nap, 0.05).add_done_callback(note)
        assert done.wait(30)
        assert ran_in[0] is not threading.main_thread()
        # ... and a caller that reads afterwards still gets its own reply.
        assert pool.submit(_nap, 0.01).result(timeout=30) == 0.01


def test_many_threads_waiting_and_not_waiting_get_every_reply_once(caplog):
    # Threads that wait in result(), futures collected by as_completed (the
    # supervisor reads those), log records in between: every answer arrives,
    # once, to its own future.
    caplog.set_level(logging.WARNING, logger="concur.test.direct")
    with concur.ProcessPool(2) as pool:
        errors: list[BaseException] = []

        def waiter(base: int) -> None:
            try:
                for i in range(base, base + 150):
                    assert pool.submit(_chatty, i).result(timeout=30) == i * i
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=waiter, args=(k * 1000,)) for k in range(3)]
        for thread in threads:
            thread.start()
        others = {pool.submit(_chatty, -i): -i for i in range(1, 200)}
        for future in concurrent.futures.as_completed(others, timeout=60):
            assert future.result() == others[future] ** 2
        for thread in threads:
            thread.join(60)
        assert not errors, errors[:3]
    logged = [r.getMessage() for r in caplog.records if r.name == "concur.test.direct"]
    assert len(logged) == 3 * 150 + 199
    assert len(set(logged)) == len(logged)


def test_a_callback_that_waits_for_the_next_task_on_the_same_worker():
    # The caller lets go of the pipe before it runs the callbacks, so one
    # that waits for the task queued behind on the same worker gets it.
    with concur.ProcessPool(1) as pool:
        pool.submit(abs, 1).result(timeout=30)
        first = pool.submit(_nap, 0.2)
        second = pool.submit(_nap, 0.1)
        seen = []
        first.add_done_callback(lambda f: seen.append(second.result(timeout=30)))
        assert first.result(timeout=30) == 0.2
        assert seen == [0.1]


def test_a_worker_that_dies_while_its_caller_reads_fails_only_that_task():
    with concur.ProcessPool(1) as pool:
        pool.submit(abs, 1).result(timeout=30)
        started = time.monotonic()
        with pytest.raises(WorkerCrashed):
            pool.submit(_die).result(timeout=30)
        assert time.monotonic() - started < 5
        assert pool.submit(abs, -3).result(timeout=30) == 3


def test_a_result_that_times_out_can_be_waited_for_again():
    with concur.ProcessPool(1) as pool:
        pool.submit(abs, 1).result(timeout=30)
        future = pool.submit(_nap, 0.4)
        started = time.monotonic()
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=0.1)
        assert time.monotonic() - started < 0.35
        assert future.result(timeout=30) == 0.4
        assert pool.submit(abs, -2).result(timeout=30) == 2


def test_a_task_time_limit_and_a_cancel_end_a_callers_read():
    with concur.ProcessPool(1) as pool:
        pool.submit(abs, 1).result(timeout=30)
        started = time.monotonic()
        with pytest.raises(TaskTimeout):
            pool.options(timeout=0.3).submit(_nap, 20).result(timeout=30)
        assert time.monotonic() - started < 5
        future = pool.submit(_nap, 20)
        time.sleep(0.2)
        threading.Timer(0.2, future.cancel).start()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(timeout=30)
        assert time.monotonic() - started < 10
        assert pool.submit(abs, -4).result(timeout=30) == 4


def test_ctrl_c_while_a_caller_reads_loses_no_reply():
    # A press between reading a reply and applying it would leave the
    # future pending for ever; the script's waits would then time out.
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "ctrl_c_storm.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok "), out.stdout
    assert int(out.stdout.split()[1]) > 100, out.stdout  # the presses did land


def test_a_raising_signal_handler_loses_no_reply():
    # An alarm whose handler raises, landing while the caller reads its
    # reply, used to leave the pipe claimed or half read (the next wait
    # hung), the main thread with every signal blocked for good, or the
    # future's lock released twice inside threading.Condition. Every future
    # must settle with its value, the pool go on and the mask be as it was.
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "alarm_storm.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout[-500:] + out.stderr[-3000:]
    ok, interrupts, lost = out.stdout.split()
    assert (ok, lost) == ("ok", "0"), out.stdout
    assert int(interrupts) > 300, out.stdout  # the alarms did land, all along


def _blocked(pid):
    """The signals a process's main thread blocks (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("SigBlk:"))
    mask = int(line.split()[1], 16)
    return {signum for signum in range(1, 65) if mask >> (signum - 1) & 1}


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_workers_and_the_caller_take_every_signal(method):
    # The supervisor thread holds every signal for the main thread; its
    # workers (and the fork server) must not inherit that: a worker with
    # SIGTERM blocked cannot be stopped, a fork server with SIGCHLD blocked
    # never hears of its children's exits.
    import multiprocessing

    import psutil

    with concur.ProcessPool(1, mp_context=multiprocessing.get_context(method)) as pool:
        pid = pool.submit(os.getpid).result(timeout=30)
        assert _blocked(pid) == set()
        if method == "forkserver":
            assert _blocked(psutil.Process(pid).ppid()) <= {signal.SIGINT}
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()


def test_callbacks_run_with_the_mask_their_thread_started_with():
    # The supervisor thread holds every signal back; a done-callback it runs
    # is the program's code, and what that starts inherits the mask: a child
    # process with SIGTERM blocked cannot be stopped, a thread with SIGINT
    # blocked changes where the kernel sends Ctrl-C.
    import subprocess

    seen: dict[str, object] = {}
    ready = threading.Event()

    def callback(_future):
        child = subprocess.Popen(["sleep", "30"])
        seen["child"] = child
        seen["child_mask"] = _blocked(child.pid)
        inner = threading.Thread(
            target=lambda: seen.setdefault(
                "thread_mask", signal.pthread_sigmask(signal.SIG_BLOCK, [])
            )
        )
        inner.start()
        inner.join()
        seen["callback_mask"] = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        ready.set()

    with concur.ProcessPool(1) as pool:
        future = pool.submit(_nap, 0.05)
        future.add_done_callback(callback)  # settled by the supervisor: nobody waits on it
        assert ready.wait(30)
        child = seen["child"]
        child.terminate()
        assert child.wait(10) == -signal.SIGTERM
    assert seen["child_mask"] == set()
    assert seen["thread_mask"] == set()
    assert seen["callback_mask"] == set()
