"""Activation bits no constraint prices are widened before evaluation, and the change is recorded."""

from __future__ import annotations

import pytest

from agents import Objective
from automl.cost import CostModel
from automl.evaluation.evaluator import Problem
from automl.problem.budget import Budget
from automl.problem.metrics import Metrics
from search_spaces.policy import Policy
from tests.tasks import tiny


class ActEvaluator:
    """Scores a policy by its mean activation bits, so a widened policy scores higher."""

    fidelity = 2

    def evaluate(self, policy: Policy, fidelity: int | None = None) -> Metrics:
        acts = [lp.act_bits for _, lp in policy.layers]
        return Metrics(accuracy=sum(acts) / (8 * len(acts)), loss=0.0, kl=0.0, fidelity=fidelity or 2)


@pytest.fixture(scope="module")
def problem() -> Problem:
    return Problem.from_task(tiny())


def _objective(problem: Problem, budget: str, widen: bool) -> Objective:
    cost = CostModel(problem.analysis, problem.space)
    return Objective(ActEvaluator(), cost, Budget.parse(budget).bind(cost), widen_activations=widen)


def test_a_size_budget_gets_the_widest_activations_at_the_same_price(problem: Problem) -> None:
    objective = _objective(problem, "size<=0.5x", widen=True)
    assert objective.widen_activations
    proposed = problem.space.uniform(4, 2)
    trial = objective(proposed)
    tops = {s.name: max(s.act_bits) for s in problem.space.layers}
    assert all(lp.act_bits == tops[n] for n, lp in trial.policy.layers)
    assert trial.proposed == proposed  # what the searcher asked for stays on the record
    assert trial.costs.size_bytes == objective.price(proposed).size_bytes
    assert trial.repair is not None and any("widened" in step for step in trial.repair.steps)
    assert {n for n, _, _ in trial.repair.changes} == {n for n, lp in proposed.layers if lp.act_bits < tops[n]}
    assert trial.accuracy > ActEvaluator().evaluate(proposed).accuracy


def test_a_budget_that_prices_activations_is_left_alone(problem: Problem) -> None:
    objective = _objective(problem, "size<=0.5x,bitops<=0.5x", widen=True)
    assert not objective.widen_activations  # BitOps depend on activation bits
    proposed = problem.space.uniform(4, 2)
    trial = objective(proposed)
    assert trial.policy == proposed and trial.repair is None


def test_off_by_default(problem: Problem) -> None:
    objective = _objective(problem, "size<=0.5x", widen=False)
    proposed = problem.space.uniform(4, 2)
    assert objective(proposed).policy == proposed


def test_reachable_from_the_cli_and_yaml() -> None:
    from automl.cli import build_parser
    from automl.runs.config import SearchConfig

    assert vars(build_parser().parse_args(["search", "--widen-activations"]))["searcher.widen_activations"] is True
    assert vars(build_parser().parse_args(["search"]))["searcher.widen_activations"] is None  # the config decides
    assert SearchConfig.from_dict({"searcher": {"widen_activations": True}}).searcher.widen_activations is True
    assert SearchConfig().searcher.widen_activations is False
