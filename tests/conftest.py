"""Shared fixtures: every test must leave no child process, no stray thread
and no shared-memory segment."""

from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

START_METHODS = ["fork", "forkserver", "spawn"]


def concur_ps(*args: str) -> subprocess.CompletedProcess[str]:
    """``concur ps ARGS`` run to its end in a subprocess (60 s at most)."""
    return subprocess.run(
        [sys.executable, "-m", "concur", "ps", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_gone(pids: list[int], limit: float) -> float:
    """Seconds until none of ``pids`` is alive (a zombie counts as gone)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return time.monotonic() - start
        time.sleep(0.005)
    raise AssertionError(f"processes {alive} still alive after {limit} s")


def _service_pids() -> set[int]:
    """multiprocessing's own long-lived helpers, shared by the whole session."""
    pids = set()
    from multiprocessing import forkserver, resource_tracker

    server = getattr(forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_pid", None):
        pids.add(server._forkserver_pid)
    trackers = [getattr(resource_tracker, "_resource_tracker", None)]
    # The benchmark's peers (loky, joblib's copy of it) start trackers of their own.
    for name in ("loky.backend.resource_tracker", "joblib.externals.loky.backend.resource_tracker"):
        module = sys.modules.get(name)
        if module is not None:
            trackers.append(getattr(module, "_resource_tracker", None))
    for tracker in trackers:
        if tracker is not None and getattr(tracker, "_pid", None):
            pids.add(tracker._pid)
    return pids


# Predicates for processes that a module-scoped fixture keeps on purpose
# across its tests (a Dask cluster); the fixture removes its entry at teardown.
SHARED_SERVICES: list[Callable[[psutil.Process], bool]] = []


def _shared(child: psutil.Process) -> bool:
    try:
        return any(keep(child) for keep in SHARED_SERVICES)
    except psutil.Error:
        return False


def leftover_children() -> list[psutil.Process]:
    service = _service_pids()
    found = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in service or _shared(child):
            continue
        try:
            if child.ppid() in service and child.status() == psutil.STATUS_ZOMBIE:
                continue  # the fork server reaps its own children
        except psutil.NoSuchProcess:
            continue
        found.append(child)
    return found


def shared_segments() -> list[str]:
    """concur's shared-memory segments this process still holds (``_shm``)."""
    found = []
    for fd in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("/memfd:concur-"):
            found.append(link)
    return found


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    threads_before = set(threading.enumerate())
    yield
    from concur.auto import release_warm

    release_warm()  # concur.map's idle pools (tests/test_warm.py checks their own lifetime)
    multiprocessing.active_children()  # reap what multiprocessing started
    deadline = time.monotonic() + 5.0
    while True:
        children = leftover_children()
        threads = [
            t
            for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and (not t.daemon or "concur" in t.name)
        ]
        gc.collect()  # a segment is closed when the last task or result using it goes
        segments = shared_segments()
        if not children and not threads and not segments:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    described = [f"{c.pid} {c.name()} {c.status()}" for c in children]
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    pytest.fail(
        f"test left behind child processes {described}, threads {[t.name for t in threads]} "
        f"and shared-memory segments {segments}"
    )


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)
