"""``concur bench``: the seed's CPU-bound and IO-bound experiment, and more,
measured side by side on the user's own machine.

``workloads`` holds the functions that are timed, ``backends`` the ways of
running them (serial, concur's pools, the standard library's), ``runner``
interleaves and repeats the runs, ``report`` prints the table and writes JSON.
"""

from .runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
