"""``advise``: what auto would decide for a long run of items like a sample."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .engine import AutoMap
from .rules import Decision, choose


def advise(fn: Callable[..., Any], sample: Iterable[Any], *more: Iterable[Any]) -> Decision:
    """Run ``fn`` over ``sample`` the way auto would; return the Decision for a long run.

    The sample really runs (side effects happen); its results are discarded.
    The Decision applies what every sampled item showed to a run of many such
    items. Give it enough items to be typical; a few dozen is usually plenty.
    """
    stream = AutoMap(fn, (sample, *more), return_exceptions=True)
    try:
        stream.to_list()
    finally:
        stream.close()
    decision = stream.decision
    assert decision is not None
    stats = stream.placement.judge.stats
    if stats is None or decision.source != "measured":
        return decision
    # Everything the sample taught, applied to a long run of such items.
    return choose(stats, None)
