"""``concur bench``: the seed's CPU-bound and IO-bound experiment, and more,
measured side by side on the user's own machine.

``workloads`` holds the functions that are timed, ``backends`` the ways of
running them (serial, concur's pools, the standard library's), ``runner``
interleaves and repeats the runs, ``report`` prints the table and writes JSON.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: worker processes import ``workloads`` to run the
    # timed functions, and must not pay for the whole harness (~100 ms each).
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'concur.bench' has no attribute {name!r}")
