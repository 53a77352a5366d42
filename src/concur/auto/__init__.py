"""Auto: measure the work, then run it inline, on threads or on processes.

How a run is decided (``AutoMap``, behind ``concur.map/imap/run`` with
``backend="auto"``)::

    item 0 ─► a probe thread ──── done within 2 ms? ── yes ─► tiny: time the next items
                 │                                              inline for up to 5 ms
                 no: sample process CPU over those 2 ms
                 ├─ CPU ≈ 0 ─────────► waiting: threads, as many as wait/compute
                 │                      says (bounded), started now
                 └─ CPU busy ─► item 1 on a second thread for 2 ms more:
                                ├─ CPU > 1.3 cores ─► the GIL is released: threads × cores
                                └─ else ───────────► GIL-bound: processes × cores

Every finished chunk (inline, thread or process) reports its wall and CPU
time; ``choose()`` runs again on the moving averages and the run switches
backend when the work changes (two agreeing verdicts in a row, so noise does
not flap it). Chunks already handed to a backend finish there: no item runs
twice, and results come back in input order when asked.

``choose()`` is a pure function of the measurements, so the rules are tested
directly and documented in ``docs/auto.md``.

The package, layer by layer:

    rules.py    Measurements, Decision, choose(), estimate(): pure, no clocks
    probe.py    the first item on a watched thread: waiting, computing, GIL
    judge.py    the measurements so far and every decision made from them
    inline.py   chunks run in the caller's thread, cut short when they turn heavy
    engine.py   AutoMap: the streaming engine with auto's placement
    pool.py     AutoPool: the same choice per function, for submit()
    advice.py   advise(): the decision a sample implies for a long run
    warm.py     pools kept warm between runs, and where a run gets its pools
"""

from __future__ import annotations

from .advice import advise
from .engine import AutoMap
from .pool import AutoPool
from .rules import (
    BACKENDS,
    Decision,
    Measurements,
    choose,
    environment_override,
    estimate,
    forced,
    gil_enabled,
)
from .warm import release_warm

__all__ = [
    "BACKENDS",
    "AutoMap",
    "AutoPool",
    "Decision",
    "Measurements",
    "advise",
    "choose",
    "environment_override",
    "estimate",
    "forced",
    "gil_enabled",
    "release_warm",
]
