"""A tiny search problem for the searcher tests: the conftest ResNet, a cost model, a fake evaluator.

Importable from worker processes (``python -c``), so it builds everything itself.
"""

from __future__ import annotations

import torch

from agents.base import Callback
from agents.objective import Objective
from automl.analysis import analyse
from automl.cost import CostModel
from automl.problem.budget import Budget
from automl.problem.metrics import Metrics
from automl.reference.models import ResNet
from search_spaces.policy import FLOAT_BITS, Policy
from search_spaces.space import SearchSpace, SpaceConfig

BUDGET = "size<=0.15x"


class SyntheticEvaluator:
    """Accuracy as a deterministic, separable function of the policy.

    Each layer loses ``0.5 ** bits`` per kept channel of its weights (0 at float), ``0.3 ** act_bits``
    for its input and a fixed share per pruned channel, weighted by the layer's position, so
    layers differ in sensitivity and the optimum under a size budget is a true mixed policy.
    """

    fidelity = 1

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.n_evaluations = 0

    def damage(self, policy: Policy) -> float:
        total = 0.0
        for i, (_, lp) in enumerate(policy):
            weight = 1.0 + (i % 3)
            n = len(lp.weight_bits)
            per = sum(0.4 if b == 0 else (0.0 if b >= FLOAT_BITS else 0.5**b) for b in lp.weight_bits) / n
            total += weight * (per + 0.3 ** lp.act_bits)
        return total

    def evaluate(self, policy: Policy, fidelity: int | None = None) -> Metrics:
        if self.delay:
            import time

            time.sleep(self.delay)
        self.n_evaluations += 1
        d = self.damage(policy)
        return Metrics(accuracy=1.0 / (1.0 + d), loss=d, kl=d, fidelity=1)

    def baseline(self) -> Metrics:
        return Metrics(accuracy=1.0, loss=0.0, kl=0.0, fidelity=0)


def sensitivity(space: SearchSpace, evaluator: SyntheticEvaluator):
    """The evaluator's own per-layer damage as a sensitivity callable (the ILP's exact proxy)."""
    index = {n: i for i, n in enumerate(space.names)}

    def fn(layer: str, sparsity: float, weight_bits: int, act_bits: int) -> float:
        weight = 1.0 + (index[layer] % 3)
        w = 0.0 if weight_bits >= FLOAT_BITS else 0.5**weight_bits
        return weight * (sparsity * 0.4 + (1 - sparsity) * w + 0.3**act_bits)

    return fn


def make_objective(
    budget: str = BUDGET, repair: bool = True, delay: float = 0.0, n_groups: int = 2, nm: tuple[str, ...] = ()
) -> Objective:
    torch.manual_seed(0)
    model = ResNet(8, width=4).eval()
    analysis = analyse(model, torch.zeros(2, 1, 28, 28))
    space = SearchSpace.build(analysis, SpaceConfig(n_groups=n_groups, max_sparsity=0.5, sparsity_step=0.25, nm_patterns=nm))
    cost_model = CostModel(analysis, space)
    evaluator = SyntheticEvaluator(delay)
    bound = Budget.parse(budget).bind(cost_model)
    return Objective(evaluator, cost_model, bound, sensitivities=sensitivity(space, evaluator), repair=repair)


def worker(storage: str, study_name: str, n: int, seed: int, delay: float = 0.02) -> list[int]:
    """One worker of a shared TPE study; returns the trial numbers this worker evaluated."""
    from agents.base import Callback
    from agents.optuna_search import TPESearcher

    class Mine(Callback):
        def __init__(self) -> None:
            self.numbers: list[int] = []

        def on_trial(self, record) -> bool:
            self.numbers.append(record.number)
            return True

    objective = make_objective(delay=delay)
    searcher = TPESearcher(objective, seed=seed, storage=storage, study_name=study_name, warm_start=False,
                           n_startup_trials=4)
    mine = Mine()
    searcher.run(n, callbacks=[mine])
    assert len(mine.numbers) == objective.n_calls == objective.evaluator.n_evaluations
    return mine.numbers


if __name__ == "__main__":
    import json
    import sys

    storage_url, name, count, worker_seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    objective_calls = worker(storage_url, name, count, worker_seed)
    print(json.dumps(objective_calls))


class StopAfter(Callback):
    """Ctrl-C (a ``KeyboardInterrupt``) when the ``n``-th trial is reported."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def on_trial(self, record) -> bool:  # noqa: ANN001
        self.seen += 1
        if self.seen >= self.n:
            raise KeyboardInterrupt
        return True
