"""Real parent deaths, real Ctrl-C, real zombies: each in a subprocess of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import concur
from conftest import wait_gone

SCRIPTS = Path(__file__).parent / "scripts"


def run_script(name: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.parametrize("mode", ["pool-sleep", "pool-busy", "pool-gil", "spawn"])
def test_no_orphans_when_the_parent_is_killed(mode):
    parent = run_script("pool_then_wait.py", mode)
    try:
        line = parent.stdout.readline()
        workers = [int(pid) for pid in line.split()]
        assert len(workers) == 2, (line, parent.stderr.read() if parent.poll() else "")
        descendants = [p.pid for p in psutil.Process(parent.pid).children(recursive=True)]
        assert set(workers) <= set(descendants)
        parent.kill()
        parent.wait(10)
        took = wait_gone(descendants, limit=5.0)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        parent.stderr.close()
    assert took < 1.0, f"the last worker exited {took:.3f} s after the parent's death"


@pytest.mark.parametrize("mode", ["map", "imap", "result", "with"])
def test_one_ctrl_c_stops_everything(mode, tmp_path):
    child = run_script("interrupt_me.py", mode, str(tmp_path), start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("started-*"))) < 2:
            assert time.monotonic() < deadline, child.stderr.read() if child.poll() else ""
            time.sleep(0.01)
        descendants = [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
        pressed = time.monotonic()
        os.killpg(child.pid, signal.SIGINT)  # what a terminal does: the whole group
        child.wait(timeout=10)
        took = time.monotonic() - pressed
        stderr = child.stderr.read()
        wait_gone(descendants, limit=5.0)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert took < 1.0, f"exit took {took:.3f} s after one Ctrl-C"
    assert stderr.count("KeyboardInterrupt") == 1, stderr  # the parent's, none from workers
    assert len(list(tmp_path.glob("started-*"))) <= 4  # queued tasks never started


def zombie_children() -> list[str]:
    """Zombies among this process's descendants, as "pid name (parent ppid)"."""
    zombies = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(f"{child.pid} {child.name()} (parent {child.ppid()})")
        except psutil.NoSuchProcess:
            pass
    return zombies


def _parent_states() -> str:
    """What the parents of lingering zombies are doing (for a failure's message)."""
    lines = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                continue
            parent = child.ppid()
            status = Path(f"/proc/{parent}/status").read_text().splitlines()
            keep = [
                line
                for line in status
                if line.split(":")[0]
                in ("Name", "State", "Threads", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
            ]
            tasks = sorted(os.listdir(f"/proc/{parent}/task"))
            waits = [Path(f"/proc/{parent}/task/{t}/wchan").read_text() for t in tasks]
            syscalls = [Path(f"/proc/{parent}/task/{t}/syscall").read_text()[:3] for t in tasks]
            own = [
                Path(f"/proc/{child.pid}/task/{t}/stat").read_text().split()[2]
                for t in os.listdir(f"/proc/{child.pid}/task")
            ]
            lines.append(
                f"zombie {child.pid} (thread states {own}) parent {parent}: {keep} "
                f"wchan {waits} syscall {syscalls}"
            )
        except (psutil.Error, OSError) as error:
            lines.append(f"zombie {child.pid}: {error!r}")
    return "\n".join(lines)


def test_no_zombies_after_a_thousand_single_task_workers():
    # A retiring worker is a zombie for the moment between its exit and its
    # reaping (by the pool under fork/spawn, by the fork server under
    # forkserver). "Reaped at once" means: zombies never pile up while the
    # workers churn (at most 4 at any sample), none stays a zombie for long
    # (5 s, generous for a loaded machine; the message then says what its
    # parent was doing), and none is left once the pool has closed. The last
    # workers retire after their results arrived, so a zombie may appear
    # after map() returns: it is timed like the others, not counted as left.
    most = 0
    first_seen: dict[str, float] = {}
    longest = 0.0
    states = ""
    stop = threading.Event()

    def sample() -> None:
        nonlocal most, longest, states
        while not stop.wait(0.05):
            zombies = zombie_children()
            most = max(most, len(zombies))
            now = time.monotonic()
            for zombie in zombies:
                lived = now - first_seen.setdefault(zombie, now)
                if lived > 2.0 and not states:
                    states = _parent_states()
                longest = max(longest, lived)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with concur.ProcessPool(2, max_tasks_per_child=1) as pool:
            assert sum(pool.map(abs, range(-1000, 0), chunksize=1)) == 500500
            time.sleep(0.5)  # the last workers retire and are reaped meanwhile
            assert len(pool.workers()) <= 2
    finally:
        stop.set()
        sampler.join()
    assert zombie_children() == [], "zombies left after the pool closed"
    assert pool.workers() == []
    assert most <= 4, f"{most} zombies at once: dead workers are not being reaped"
    assert longest < 5.0, f"a zombie lived {longest:.1f} s:\n{states}"


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_max_tasks_per_child_never_strands_work(start_method):
    with concur.ProcessPool(2, mp_context=start_method, max_tasks_per_child=1) as pool:
        futures = [pool.submit(os.getpid) for _ in range(12)]
        pids = [f.result(timeout=60) for f in futures]
    assert len(set(pids)) == 12


def _grow(megabytes):
    global _ballast
    _ballast = bytearray(megabytes * 1024 * 1024)
    return os.getpid()


def test_max_memory_per_child_retires_the_worker_after_the_task():
    with concur.ProcessPool(1, max_memory_per_child="100MB") as pool:
        small = [pool.submit(_grow, 1).result(timeout=30) for _ in range(3)]
        assert len(set(small)) == 1  # under the limit: the same worker goes on
        big = [pool.submit(_grow, 150).result(timeout=30) for _ in range(2)]
        # the task that crossed the limit finished on the old worker, which then retired
        assert big[0] == small[0]
        assert big[1] != small[0]


@pytest.mark.parametrize("bad", ["lots", -5, 0, "12XB"])
def test_bad_memory_limit_is_refused(bad):
    with pytest.raises(ValueError, match="512MB"):
        concur.ProcessPool(1, max_memory_per_child=bad)


@pytest.mark.parametrize(
    ("kind", "daemon", "finished"),
    [
        ("process", "daemon", False),
        ("process", "joined", True),
        ("thread", "daemon", False),
        ("thread", "joined", True),
    ],
)
def test_daemon_workers_end_with_the_program_and_others_are_joined(
    kind, daemon, finished, tmp_path
):
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "daemons.py"), kind, daemon, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    took = time.monotonic() - started
    assert (tmp_path / "finished").exists() is finished
    if kind == "process":
        wait_gone([int(out.stdout.split()[0])], limit=2.0)
    if finished:
        assert took >= 0.5  # the program waited for its worker


@pytest.mark.parametrize("start_method", ["fork", "spawn"])  # the child's parent is us
def test_workers_outlive_the_short_lived_thread_that_made_the_pool(start_method):
    # PR_SET_PDEATHSIG fires when the *thread* that started a child exits;
    # concur starts workers from the pool's own supervisor thread.
    made: dict[str, concur.ProcessPool] = {}
    first: dict[str, int] = {}

    def build() -> None:
        made["pool"] = concur.ProcessPool(1, mp_context=start_method)
        first["pid"] = made["pool"].submit(os.getpid).result(timeout=30)

    helper = threading.Thread(target=build)
    helper.start()
    helper.join()
    with made["pool"] as pool:
        time.sleep(0.2)  # give a wrongly-armed death signal time to land
        assert pool.submit(os.getpid).result(timeout=30) == first["pid"]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_process_spawned_from_a_short_lived_thread_survives_it(start_method):
    holder: dict[str, concur.Worker] = {}

    def start() -> None:
        worker = concur.spawn(_nap_then_pid, 1.0, mp_context=start_method)
        holder["w"] = worker
        # Exit only once the child has armed itself: a death signal wrongly
        # tied to this thread would then fire.
        deadline = time.monotonic() + 10
        while psutil.Process(worker.pid).name() != "concur-spawn":
            assert time.monotonic() < deadline
            time.sleep(0.005)

    helper = threading.Thread(target=start)
    helper.start()
    helper.join()
    worker = holder["w"]
    assert worker.result(timeout=30) == worker.pid
    assert worker.exitcode == 0


def _nap_then_pid(seconds):
    time.sleep(seconds)
    return os.getpid()
