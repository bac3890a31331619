"""Random search: uniform over the feasible policies of the space, by rejection sampling."""

from __future__ import annotations

import numpy as np

from agents.base import Searcher
from agents.objective import Objective
from agents.records import TrialRecord
from automl.errors import ConfigError
from search_spaces.policy import Policy


class RandomSearcher(Searcher):
    """Draws policies with :meth:`SearchSpace.sample` and keeps the first that fits the budget.

    Rejection sampling makes the draw uniform over the feasible part of the space (in the
    space's own parametrisation: sparsity level, group bits, activation bits). Feasibility
    is judged by the cost model, so rejected draws cost no evaluation. When ``max_tries``
    draws all miss (a tight budget in a large space), the last draw is handed to the
    objective, which repairs it when its repair is on; the repair is then in the record.

    The draws of trial ``n`` come from a generator seeded with ``(seed, n)``, so a search
    resumed after a crash at trial ``n`` proposes exactly what the uninterrupted one would
    have, whatever the crash cut (no generator state to save or replay).

    Args:
        objective: scores policies.
        seed: seeds the draws.
        max_tries: draws per proposal before falling back to repair.
    """

    name = "random"

    def __init__(self, objective: Objective, *, seed: int = 0, max_tries: int = 1000) -> None:
        super().__init__(objective, seed=seed)
        if max_tries < 1:
            raise ConfigError(f"max_tries must be >= 1, got {max_tries}")
        self.max_tries = int(max_tries)
        self.rejected = 0
        self.fallbacks = 0

    def ask(self) -> Policy:
        rng = np.random.default_rng([self.seed, len(self.records)])  # the next trial's number
        policy = self.space.sample(rng)
        for _ in range(self.max_tries - 1):
            if self.objective.feasible(policy):
                return policy
            self.rejected += 1
            policy = self.space.sample(rng)
        if not self.objective.feasible(policy):
            self.rejected += 1
            self.fallbacks += 1
        return policy

    def tell(self, policy: Policy, record: TrialRecord) -> None:
        """Random search does not learn."""
