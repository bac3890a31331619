"""The integer-program searcher (HAWQ-V3 style): per-layer sensitivities + an exact ILP under the budget."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from agents.base import Callback, Searcher
from agents.objective import Objective
from agents.records import SearchResult, TrialRecord
from automl.errors import AutoMLError, ConfigError, InfeasibleBudget
from automl.problem.ilp import choice_table, solve_ilp
from search_spaces.policy import Policy


class ILPSearcher(Searcher):
    """Evaluates the optimum of the separable proxy, then optima under tightened budgets.

    The first proposal is :func:`automl.problem.ilp.solve_ilp` under the search's budget with the
    objective's sensitivities. The proxy is only a proxy, so further evaluations go to the
    program's optima with every limit scaled by ``sweep`` factors evenly spaced from 1 down
    to ``min_factor`` (a walk along the proxy's own front), skipping policies already
    proposed. Once the sweep is exhausted the best evaluated policy is proposed again: the
    record shows the repeat, and an evaluation cache answers it at no cost.

    Args:
        objective: scores policies; its ``sensitivities`` are the program's objective.
        seed: unused (the program is deterministic); kept for the common interface.
        sweep: budget factors tried, the first being 1.
        min_factor: the tightest fraction of each limit.
        time_limit: seconds the solver may spend per program.
        mip_rel_gap: relative optimality gap at which the solver stops.
    """

    name = "ilp"

    def __init__(
        self,
        objective: Objective,
        *,
        seed: int = 0,
        sweep: int = 16,
        min_factor: float = 0.6,
        time_limit: float = 60.0,
        mip_rel_gap: float = 1e-6,
    ) -> None:
        super().__init__(objective, seed=seed)
        if not 0.0 < min_factor <= 1.0:
            raise ConfigError(f"min_factor must lie in (0, 1], got {min_factor}")
        if sweep < 1:
            raise ConfigError(f"sweep must be >= 1, got {sweep}")
        self.schedule = [float(f) for f in np.linspace(1.0, min_factor, sweep)]
        self.time_limit = float(time_limit)
        self.mip_rel_gap = float(mip_rel_gap)
        self._next = 0
        self._proposed: set[str] = set()
        self.factors: list[float] = []
        self._table: tuple[Any, Any] | None = None  # (sensitivities, priced decisions) of the sweep
        self._feed: SweepFeed | None = None

    def table(self) -> Any:
        """The priced decisions of the program, built once per sensitivity table (no limit enters them)."""
        sens = self.objective.sensitivities
        if self._table is None or self._table[0] is not sens:
            self._table = (sens, choice_table(self.space, self.objective.cost_model, self.objective.bound.metrics, sens))
        return self._table[1]

    def solve(self, factor: float = 1.0) -> Policy:
        """The program's optimum with every limit scaled by ``factor``."""
        bound = self.objective.bound
        if factor != 1.0:
            bound = replace(bound, limits=tuple((m, v * factor) for m, v in bound.limits))
        return solve_ilp(
            self.space, self.objective.cost_model, bound, self.objective.sensitivities,
            time_limit=self.time_limit, mip_rel_gap=self.mip_rel_gap, table=self.table(),
        )

    def feed(self, start: int = 0) -> SweepFeed:
        """The sweep's optima from schedule position ``start`` on, solved ahead on a thread."""
        self.table()  # priced here, on the calling thread: the solver thread only solves
        return SweepFeed(self, self.schedule[start:])

    def ask(self) -> Policy:
        if self._feed is None and self._next < len(self.schedule):
            self._feed = self.feed(self._next)
        while self._feed is not None:
            item = self._feed.get()
            if item is None:
                self._feed, self._next = None, len(self.schedule)
                break
            factor, policy = item
            self._next += 1
            if policy is not None and policy.key() not in self._proposed:
                self._proposed.add(policy.key())
                self.factors.append(factor)
                return policy
        best = self.result().best
        return best.policy if best is not None else self.solve(1.0)

    def run(self, n_evaluations: int, callbacks: Sequence[Callback] = ()) -> SearchResult:
        try:
            return super().run(n_evaluations, callbacks)
        finally:
            self.close()  # a later run() or ask() restarts the sweep where this one stopped

    def close(self) -> None:
        """Stop solving ahead (the thread ends after its current solve)."""
        if self._feed is not None:
            self._feed.stop()
            self._feed = None

    def tell(self, policy: Policy, record: TrialRecord) -> None:
        """Remember ``policy`` as proposed (a resumed search told its old records does not repeat them);
        the program itself does not learn from records."""
        self._proposed.add(policy.key())


class SweepFeed:
    """Optima of the program along a list of budget factors, solved ahead on a daemon thread.

    HiGHS releases the GIL while it solves, so the next optimum is found while the current
    policy is evaluated (on ResNet-20 a solve is shorter than an evaluation). The order
    is the schedule's whatever the timing: :meth:`get` hands the optima out in factor order.
    A factor whose program cannot be made exact is skipped; an infeasible one ends the sweep
    (tighter factors are infeasible too). Any other error reaches the caller of :meth:`get`.
    """

    def __init__(self, searcher: ILPSearcher, factors: list[float]) -> None:
        self._searcher = searcher
        self._factors = list(factors)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="ilp-sweep", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            for factor in self._factors:
                if self._stop.is_set():
                    return
                try:
                    self._queue.put((factor, self._searcher.solve(factor)))
                except InfeasibleBudget:
                    return
                except AutoMLError:
                    self._queue.put((factor, None))
        except BaseException as exc:  # handed to the consumer, raised on its thread
            self._queue.put(exc)
        finally:
            self._queue.put(None)

    def get(self, block: bool = True) -> tuple[float, Policy | None] | None:
        """The next ``(factor, optimum)``, the optimum ``None`` where the program could not be made
        exact; ``None`` once the sweep is over.

        Raises:
            queue.Empty: ``block`` is false and the next optimum is not solved yet.
        """
        item = self._queue.get(block=block)
        if isinstance(item, BaseException):
            raise item  # the thread's closing None follows it
        if item is None:
            self._queue.put(None)  # stays over for later calls
        return item

    def stop(self) -> None:
        self._stop.set()
