"""``advise``: what auto would decide for a run of items like a sample."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from .engine import AutoMap
from .rules import Decision, choose


def advise(
    fn: Callable[..., Any],
    sample: Iterable[Any],
    *more: Iterable[Any],
    items: int | None = None,
) -> Decision:
    """Run ``fn`` over ``sample`` the way auto would; return the Decision
    for a run of ``items`` such items (None: a long run of unknown length).

    The sample really runs (side effects happen); its results are discarded.
    The Decision applies what every sampled item showed to the run it
    describes, and its reason gives the estimates for that many items
    (assuming no pool is warm yet). Sampled items that raised are counted in
    ``decision.warnings``: a failing call's time is rarely a working one's.
    Give it enough items to be typical; a few dozen is usually plenty.
    """
    if items is not None and (not isinstance(items, int) or items < 1):
        raise ValueError(f"items must be an int >= 1 (or None for a long run), not {items!r}")
    stream = AutoMap(fn, (sample, *more), return_exceptions=True)
    try:
        results = stream.to_list()
    finally:
        stream.close()
    decision = stream.decision
    assert decision is not None
    stats = stream.placement.judge.stats
    if stats is not None and decision.source == "measured":
        # Everything the sample taught, applied to the run asked about.
        decision = choose(replace(stats, warm=False), items)
    failed = [value for value in results if isinstance(value, BaseException)]
    if not failed:
        return decision
    first = failed[0]
    warning = (
        f"{len(failed)} of {len(results)} sampled items raised "
        f"(first: {type(first).__name__}: {first}); their time may not be a working call's"
    )
    return replace(decision, warnings=(*decision.warnings, warning))
