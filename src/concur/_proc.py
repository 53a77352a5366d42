"""Process facts set through the kernel: the parent-death signal and the name.

Kept apart from ``_supervise`` so that a process which must stay lean (a
server's master, whose forks are cheaper without threading's at-fork hooks)
can use them without importing threading.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable

# The CPUs a concur worker process may use for work of its own: its share of
# the machine, set in each worker of a pool (cores // workers, at least 1) and
# inherited by whatever it starts. A user may set it too (a container's share).
CPU_BUDGET_ENV = "CONCUR_CPU_BUDGET"


def host_share() -> float:
    """The share of a CPU one more runnable thread of this process gets now:
    1.0 on an idle machine, less when more threads are runnable than this
    process may use CPUs (``/proc/loadavg``'s count of runnable threads,
    this one among them). 1.0 where it cannot be read.

    A program whose threads compute can use at most this share of each CPU
    it may run on: on a busy machine, a CPU clock running slower than the
    wall clock is the host's queue, not a wait.
    """
    try:
        with open("/proc/loadavg", "rb") as handle:
            runnable = int(handle.read().split()[3].split(b"/")[0])
    except (OSError, IndexError, ValueError):
        return 1.0
    return min(1.0, _usable_cpus() / max(1, runnable))


@functools.cache
def cpu_count() -> int:
    """CPUs this process may use: its affinity mask (where the OS has one),
    at most ``CONCUR_CPU_BUDGET``.

    Every default that scales with the machine reads it (a ProcessPool's
    worker count, auto's cores), so code running inside a concur worker
    does not start a machine's worth of processes per worker."""
    cpus = _usable_cpus()
    budget = os.environ.get(CPU_BUDGET_ENV, "").strip()
    if not budget:
        return cpus
    if not budget.isdigit() or int(budget) < 1:
        raise ValueError(
            f"{CPU_BUDGET_ENV}={budget!r} is not a CPU count; set a whole number >= 1, or unset it"
        )
    return min(cpus, int(budget))


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_cpu_budget(cpus: int) -> None:
    """This process (and what it starts) uses at most ``cpus`` CPUs."""
    os.environ[CPU_BUDGET_ENV] = str(max(1, cpus))
    cpu_count.cache_clear()


def load_libc() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def set_pdeathsig() -> None:
    libc = load_libc()
    if libc is not None:
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)  # type: ignore[attr-defined]


def set_title(title: str, short: str, full: bool = True) -> None:
    """A readable name in ``ps`` and ``top``: the kernel's process name
    (``PR_SET_NAME``, what ``ps -o comm`` and ``top`` show) and, with the
    setproctitle (a dependency; absent only where it would not install) and
    ``full``, the whole command line."""
    setter = title_setter() if full else None
    if setter is not None:
        setter(title)  # it sets the kernel name too; ours follows
    libc = load_libc()
    if libc is not None:
        pr_set_name = 15
        libc.prctl(pr_set_name, short.encode()[:15], 0, 0, 0)  # type: ignore[attr-defined]


@functools.cache
def title_setter() -> Callable[[str], None] | None:
    """setproctitle's C function, or None when it is not installed.

    Loaded from its extension module directly: the package's ``__init__``
    imports logging, and with it threading, which a lean process (a
    server's master) must not load.
    """
    import importlib.machinery
    import importlib.util

    try:
        spec = importlib.util.find_spec("setproctitle")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_setproctitle" + suffix)
            if not os.path.exists(path):
                continue
            name = "setproctitle._setproctitle"
            loader = importlib.machinery.ExtensionFileLoader(name, path)
            found = importlib.util.spec_from_file_location(name, path, loader=loader)
            if found is None:
                return None
            try:
                module = importlib.util.module_from_spec(found)
                loader.exec_module(module)
            except ImportError:
                return None
            setter: Callable[[str], None] = module.setproctitle
            return setter
    return None
