"""What a run has measured, and the decisions it made from that."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace

from .._proc import cpu_count
from .rules import GIL_FREE_UTILIZATION, Decision, Measurements, choose, gil_enabled

log = logging.getLogger("concur.auto")


class Judge:
    """What a run has measured and what it decided from that.

    ``stats`` are the Measurements so far; ``decisions`` every Decision in
    order (the last is current). A change of backend takes two verdicts in a
    row (``pending_switch``): one odd chunk does not move the work. The
    caller's worker count and chunk size, if given, apply to every decision.
    """

    def __init__(self, workers: int | None, chunksize: int | None, forced: str | None) -> None:
        self.workers = workers
        self.chunksize = chunksize  # every chunk this size (workers and threads), if given
        self.forced = forced  # a backend given by the caller or CONCUR_BACKEND
        self.cores = cpu_count()
        self.gil = gil_enabled()
        self.stats: Measurements | None = None
        self.decisions: list[Decision] = []
        self.pending_switch: str | None = None
        self.utilization: float | None = None
        self.released = False  # threads were seen running items side by side (probe)
        self.transfer = 0.0
        self.warm = False  # a process pool of the right size runs already
        # Waits are taken for waits on the outside world (threads ramp up),
        # unless the probe saw a sleep: where it can tell (Linux).
        self.outside = sys.platform == "linux"
        self.clock = (time.perf_counter(), time.process_time())
        self.rate: float | None = None  # the last process_utilization reading

    @property
    def decision(self) -> Decision | None:
        return self.decisions[-1] if self.decisions else None

    def measure(self, wall: float, cpu: float, items: int) -> Measurements:
        m = Measurements(
            items=items,
            wall=wall / items,
            cpu=cpu / items,
            transfer=self.transfer,
            utilization=self.utilization,
            released=self.released,
            cores=self.cores,
            gil=self.gil,
            warm=self.warm,
        )
        self.stats = m
        return m

    def sized(self, decision: Decision) -> Decision:
        """The decision with the caller's worker count and chunk size, if given."""
        if decision.backend == "inline":
            return decision
        if self.forced is None and self.workers is not None:
            decision = replace(decision, workers=self.workers)
        if self.chunksize is not None:
            decision = replace(decision, chunksize=self.chunksize)
        return decision

    def adopt(self, decision: Decision) -> None:
        decision = self.sized(decision)
        previous = self.decision
        self.decisions.append(decision)
        if previous is None or previous.backend != decision.backend:
            # The process's CPU rate, from here: one read across the probe
            # (one core) would average the threads' rate down to theirs.
            self.clock, self.rate = (time.perf_counter(), time.process_time()), None
        if previous is None:
            log.info("concur auto: %s", decision)
        elif previous.backend != decision.backend:
            log.info("concur auto: the work changed; now %s", decision)

    def process_utilization(self) -> float | None:
        """Process CPU seconds per wall second over the last window of at
        least 50 ms (shorter windows are noise): a new reading once one has
        passed, else the last one (None before the first)."""
        now = (time.perf_counter(), time.process_time())
        span = now[0] - self.clock[0]
        if span >= 0.05:
            self.rate = (now[1] - self.clock[1]) / span
            self.clock = now
        return self.rate

    def observe(
        self,
        count: int,
        wall: float,
        cpu: float,
        backend: str,
        left: int | None,
        more_input: bool,
        warm: bool,
    ) -> None:
        """Fold a finished chunk into the averages; switch backend if the work changed."""
        if count == 0:
            return
        self.warm = warm
        per_wall, per_cpu = wall / count, cpu / count
        if backend == "thread":
            # Busy threads share the GIL, so each one's wall time overstates
            # waiting. The whole process's CPU rate tells the truth: near one
            # core means the work computes; above 1.3 means the GIL is released.
            rate = self.process_utilization()
            if rate is not None and rate > GIL_FREE_UTILIZATION:
                self.utilization = rate
            # Near one busy core, and items that do compute (sleepers use
            # ~0.01% CPU; items sharing the GIL with up to 100 others, 1% or more).
            if rate is not None and rate > 0.8 and per_cpu > 0.01 * per_wall:
                per_wall = min(per_wall, per_cpu)  # CPU computed elsewhere may exceed it
                if rate <= GIL_FREE_UTILIZATION:
                    # Computing threads that fill one core and no more: whatever
                    # the probe saw of earlier items, these take turns for the GIL.
                    self.utilization, self.released = rate, False
        old = self.stats or Measurements(cores=self.cores, gil=self.gil, transfer=self.transfer)
        # Each chunk is a few milliseconds of work: weigh chunks, not items, so
        # a change shows within a couple of chunks however many items came before.
        weight = 0.5 if old.items else 1.0
        m = replace(
            old,
            items=old.items + count,
            wall=(1 - weight) * old.wall + weight * per_wall,
            cpu=(1 - weight) * old.cpu + weight * per_cpu,
            utilization=self.utilization,
            warm=warm,
        )
        self.stats = m
        if self.forced is not None or not more_input:
            # The backend stays as given, or every item left is already placed:
            # a new verdict could move nothing (and near the end the estimates
            # converge, so it would only mislabel the run).
            return
        self.redecide(choose(m, left))

    def redecide(self, verdict: Decision) -> None:
        current = self.decision
        assert current is not None
        if verdict.backend == current.backend:
            self.pending_switch = None
            verdict = self.sized(verdict)
            if verdict.workers > current.workers or verdict.chunksize != current.chunksize:
                self.decisions[-1] = verdict  # same backend, better sizing
            return
        if self.pending_switch == verdict.backend:
            self.pending_switch = None
            self.adopt(verdict)
        else:
            self.pending_switch = verdict.backend
