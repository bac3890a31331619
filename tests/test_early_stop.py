"""Early stopping: clearly worse policies stop, a policy that would become the incumbent never does."""

from __future__ import annotations

import numpy as np
import pytest

from automl.errors import ConfigError
from automl.evaluation.early_stop import EarlyStopRule
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem

from .test_incremental import _task


def _stops(rule: EarlyStopRule, outcomes: np.ndarray, batch: int, incumbent: float) -> bool:
    total, correct = len(outcomes), 0.0
    for seen in range(batch, total, batch):
        correct = float(outcomes[:seen].sum())
        if rule.should_stop(correct / seen, seen, total, incumbent):
            return True
    return False


def test_a_policy_that_would_become_the_incumbent_is_never_stopped() -> None:
    # Constructed case: a 750-sample split in batches of 50, the policy's full-split accuracy
    # 0.5 points above the incumbent's, in 500 random orders of the split.
    rule, rng = EarlyStopRule(delta=0.01), np.random.default_rng(0)
    incumbent, total = 0.96, 750
    outcomes = np.zeros(total)
    outcomes[: int(round((incumbent + 0.005) * total))] = 1
    assert outcomes.mean() > incumbent
    assert not any(_stops(rule, rng.permutation(outcomes), 50, incumbent) for _ in range(500))


def test_a_clearly_worse_policy_stops_early() -> None:
    rule, rng = EarlyStopRule(delta=0.01), np.random.default_rng(1)
    outcomes = (rng.random(750) < 0.6).astype(float)
    assert all(_stops(rule, rng.permutation(outcomes), 250, 0.96) for _ in range(50))


def test_the_bound_is_never_below_the_running_mean_nor_above_certainty() -> None:
    rule = EarlyStopRule()
    for mean in (0.0, 0.3, 0.9, 1.0):
        for seen in (1, 10, 300, 749):
            u = rule.upper_bound(mean, seen, 750)
            assert mean <= u <= (seen * mean + 750 - seen) / 750 + 1e-12


def test_a_bad_delta_is_refused() -> None:
    with pytest.raises(ConfigError, match="delta"):
        EarlyStopRule(delta=0.0)


def test_the_evaluator_stops_below_the_incumbent_and_says_so(tiny_resnet) -> None:
    problem = Problem.from_task(_task(tiny_resnet))
    policy = problem.space.sample(np.random.default_rng(0))
    full = Evaluator(problem, EvalConfig(bn_samples=0, early_stop=False, fidelity=2)).evaluate(policy)
    ev = Evaluator(problem, EvalConfig(bn_samples=0, fidelity=2, early_stop=True))
    ev.set_incumbent(max(0.0, full.accuracy - 0.01))  # the policy would become the incumbent
    kept = ev.evaluate(policy)
    assert not kept.stopped_early and (kept.accuracy, kept.loss, kept.kl) == (full.accuracy, full.loss, full.kl)
    ev2 = Evaluator(problem, EvalConfig(bn_samples=0, fidelity=2, early_stop=True))
    ev2.set_incumbent(0.99)  # random data: about 10 % accuracy, far below
    stopped = ev2.evaluate(policy)
    assert stopped.stopped_early and stopped.samples < kept.samples
    assert stopped.accuracy < 0.99  # reported as the running accuracy: below the incumbent, never the best


def test_the_objective_tells_the_evaluator_its_incumbent(tiny_resnet) -> None:
    from agents.objective import Objective
    from automl.cost import CostModel
    from automl.problem.budget import Budget
    from automl.problem.cache import CachedEvaluator

    problem = Problem.from_task(_task(tiny_resnet))
    cm = CostModel(problem.analysis, problem.space)
    ev = Evaluator(problem, EvalConfig(bn_samples=0, fidelity=1, early_stop=True))
    objective = Objective(CachedEvaluator(ev), cm, Budget.parse("size<=1.0x").bind(cm))
    record = objective(problem.space.uniform(8))
    assert record.feasible and ev.incumbent == record.accuracy == objective.incumbent
