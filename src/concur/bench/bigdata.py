"""Large data: the same big array to every task, and big arrays back.

Each library runs the work its own best way: concur's pools and the
standard library's take the array as every task's argument (concur writes
it to shared memory once per ``map``), joblib memory-maps it, mpire hands it
over as ``shared_objects`` (fork, copy-on-write), Dask scatters it once.
Pools are warm (started, numpy imported, by a first call) so the time is
the data's.

The caller's peak memory while one large result arrives and is read is
measured by the kernel: ``/proc/self/clear_refs`` resets the peak resident
size (``VmHWM``) before, and it is read after.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from . import workloads
from .backends import Backend, Runner

MB = 1 << 20


def needs_numpy(backend: Backend) -> str | None:
    if importlib.util.find_spec("numpy") is None:
        return "skipped: needs numpy (pip install numpy)"
    return None


def _warm(backend: Backend) -> Runner:
    """A runner of 2 workers, started and with numpy imported in them."""
    import numpy as np

    runner = backend.make(2)
    runner.map(workloads.array_total, [np.ones(4)] * 4)
    return runner


def big_args(backend: Backend, cfg: Any) -> float:
    """16 tasks, each given the same array (80 MB; 8 MB with --quick); 2 workers."""
    import numpy as np

    size = max(MB, int((8 if cfg.quick else 80) * MB * cfg.scale))
    array = np.ones(size // 8)
    runner = _warm(backend)
    try:
        start = time.perf_counter()
        results = runner.map_same(workloads.array_total, array, 16)
        elapsed = time.perf_counter() - start
    finally:
        runner.close()
    if results != [float(size // 8)] * 16:
        raise AssertionError(f"{backend.name} returned wrong results")
    return elapsed


def big_results(backend: Backend, cfg: Any) -> float:
    """16 tasks, each returning an array (16 MB; 4 MB with --quick) the caller reads."""
    size = max(MB, int((4 if cfg.quick else 16) * MB * cfg.scale))
    runner = _warm(backend)
    try:
        start = time.perf_counter()
        results = runner.map(workloads.filled, [workloads.Fill(size, i) for i in range(16)])
        totals = [int(r[-1]) for r in results]
        elapsed = time.perf_counter() - start
    finally:
        runner.close()
    if totals != list(range(16)) or any(r.nbytes != size for r in results):
        raise AssertionError(f"{backend.name} returned wrong results")
    return elapsed


def result_peak(backend: Backend, cfg: Any) -> float:
    """The caller's peak memory rise, in result sizes, while one result
    (200 MB; 32 MB with --quick) arrives and is summed."""
    size = max(MB, int((32 if cfg.quick else 200) * MB * cfg.scale))
    runner = _warm(backend)
    try:
        base = _reset_peak()
        result = runner.call(workloads.filled, workloads.Fill(size, 1))
        total = int(result.sum(dtype="u8"))
        rise = _peak() - base
        del result
    finally:
        runner.close()
    if total != size:
        raise AssertionError(f"{backend.name} returned wrong results")
    # Memory the process gave back meanwhile can leave the peak below the
    # start at small sizes: no rise.
    return max(0.0, rise) / size


def _reset_peak() -> int:
    """Reset the peak resident size to the current one; return it (bytes)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status("VmRSS")


def _peak() -> int:
    return _status("VmHWM")


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_unavailable(backend: Backend) -> str | None:
    try:
        _reset_peak()
    except OSError as exc:
        return f"skipped: cannot reset the peak memory here ({exc})"
    return needs_numpy(backend)
