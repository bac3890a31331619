"""The integer-program searcher (HAWQ-V3 style): per-layer sensitivities + an exact ILP under the budget."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from agents.base import Searcher
from agents.objective import Objective
from agents.records import TrialRecord
from automl.errors import AutoMLError, ConfigError, InfeasibleBudget
from automl.ilp import solve_ilp
from search_spaces.policy import Policy


class ILPSearcher(Searcher):
    """Evaluates the optimum of the separable proxy, then optima under tightened budgets.

    The first proposal is :func:`automl.ilp.solve_ilp` under the search's budget with the
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

    def solve(self, factor: float = 1.0) -> Policy:
        """The program's optimum with every limit scaled by ``factor``."""
        bound = self.objective.bound
        if factor != 1.0:
            bound = replace(bound, limits=tuple((m, v * factor) for m, v in bound.limits))
        return solve_ilp(
            self.space, self.objective.cost_model, bound, self.objective.sensitivities,
            time_limit=self.time_limit, mip_rel_gap=self.mip_rel_gap,
        )

    def ask(self) -> Policy:
        while self._next < len(self.schedule):
            factor = self.schedule[self._next]
            self._next += 1
            try:
                policy = self.solve(factor)
            except InfeasibleBudget:
                self._next = len(self.schedule)  # tighter factors are infeasible too
                break
            except AutoMLError:
                continue  # this factor's optimum could not be made exact; try the next
            if policy.key() not in self._proposed:
                self._proposed.add(policy.key())
                self.factors.append(factor)
                return policy
        best = self.result().best
        return best.policy if best is not None else self.solve(1.0)

    def tell(self, policy: Policy, record: TrialRecord) -> None:
        """Remember ``policy`` as proposed (a resumed search told its old records does not repeat them);
        the program itself does not learn from records."""
        self._proposed.add(policy.key())
