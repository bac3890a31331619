"""The benchmarks' evaluation counter counts distinct policies; repeats and cache hits are free."""

from __future__ import annotations

import numpy as np
import pytest

from agents import Objective, make_searcher
from agents.baselines import DistinctEvaluator, DistinctLimit
from automl.cost import CostModel
from automl.evaluation.evaluator import Problem
from automl.problem.budget import Budget
from automl.problem.cache import CachedEvaluator
from automl.problem.metrics import Metrics
from search_spaces.policy import LayerPolicy, Policy
from tests.tasks import tiny


class FakeEvaluator:
    """Scores a policy by its mean bits; remembers every call."""

    fidelity = 2

    def __init__(self) -> None:
        self.calls: list[str] = []

    def evaluate(self, policy: Policy, fidelity: int | None = None) -> Metrics:
        self.calls.append(policy.key())
        return Metrics(accuracy=policy.mean_weight_bits() / 32, loss=0.0, kl=0.0, fidelity=fidelity or 2)


@pytest.fixture(scope="module")
def problem() -> Problem:
    return Problem.from_task(tiny())


def test_repeats_are_not_counted(problem: Problem) -> None:
    fake = FakeEvaluator()
    counter = DistinctEvaluator(fake, problem.space)
    a, b = problem.space.uniform(4), problem.space.uniform(2)
    for p in (a, a, b, a, b):
        counter.evaluate(p)
    assert counter.distinct == 2 and counter.hits == 3 and counter.calls == 5
    assert len(fake.calls) == 2
    counter.evaluate(a, fidelity=3)  # another fidelity is another evaluation
    assert counter.distinct == 3


def test_policies_the_network_runs_alike_count_once(problem: Problem) -> None:
    space = problem.space
    members = next(m for m in space.coupled().values() if len(m) > 1 and all(space.layer(n).prunable for n in m))
    base = space.uniform(4)
    # prune channel 0 in one member only: coupling prunes it in all, so it runs as the fully pruned one
    one = base
    lp = base.as_dict()[members[0]]
    one = one.replace(members[0], LayerPolicy(lp.act_bits, (0, *lp.weight_bits[1:])))
    both = space.resolve(one)
    assert one.key() != both.key()
    counter = DistinctEvaluator(FakeEvaluator(), space)
    counter.evaluate(one)
    counter.evaluate(both)
    assert counter.distinct == 1


def test_charged_stage_counts_once_and_its_policies_are_free(problem: Problem) -> None:
    shared = CachedEvaluator(FakeEvaluator())
    stage = DistinctEvaluator(shared, problem.space)
    for bits in (8, 6, 4):
        stage.evaluate(problem.space.uniform(bits))
    counter = DistinctEvaluator(shared, problem.space)
    counter.charge(stage.keys())
    assert counter.distinct == 3
    counter.evaluate(problem.space.uniform(4))  # evaluated by the stage already
    assert counter.distinct == 3
    counter.evaluate(problem.space.uniform(3))
    assert counter.distinct == 4
    counter.charge(evaluations=7)  # a curvature estimate worth seven evaluations
    assert counter.distinct == 11


@pytest.mark.parametrize("name", ["ilp", "random"])
def test_a_search_stops_at_the_distinct_limit(problem: Problem, name: str) -> None:
    cost_model = CostModel(problem.analysis, problem.space)
    bound = Budget.parse("size<=0.2x").bind(cost_model)
    fake = FakeEvaluator()
    counter = DistinctEvaluator(CachedEvaluator(fake), problem.space)
    options = {"sweep": 4, "time_limit": 5.0} if name == "ilp" else {}
    searcher = make_searcher(name, Objective(counter, cost_model, bound), seed=0, **options)
    result = searcher.run(12, callbacks=[DistinctLimit(counter, 6)])
    keys = {problem.space.resolve(r.policy).key() for r in result.records}
    assert counter.distinct == len(keys) == len(set(fake.calls))
    if name == "ilp":  # four sweep factors: at most four distinct policies; repeats cost no budget,
        # (answered by the objective, not the evaluator), so the search ends when the searcher
        # keeps repeating itself, and says so
        assert counter.distinct <= 4 and result.n_cache_hits >= 8 and result.n_evaluations == counter.distinct
        assert "max_duplicates" in result.stop_reason
    else:
        assert counter.distinct == 6 and len(result.records) == 6


def test_attributes_of_the_wrapped_evaluator_are_reachable() -> None:
    fake = FakeEvaluator()
    counter = DistinctEvaluator(fake)
    assert counter.fidelity == 2
    assert np.isclose(counter.evaluate(Policy((("a", LayerPolicy(8, (4, 4))),))).accuracy, 4 / 32)
