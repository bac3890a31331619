"""The fair uniform baseline: every uniform (weight bits, activation bits, sparsity) combination."""

from __future__ import annotations

import pytest

from agents.baselines import enumerate_layer_policies, feasible_uniform, uniform_combinations
from automl.cost import CostModel
from automl.errors import ConfigError
from automl.evaluation.evaluator import Problem
from automl.problem.budget import Budget
from search_spaces.space import SpaceConfig
from tests.tasks import tiny


@pytest.fixture(scope="module")
def problem() -> Problem:
    return Problem.from_task(tiny())


def test_includes_decoupled_weight_and_activation_bits(problem: Problem) -> None:
    combos = uniform_combinations(problem.space)
    pairs = {(c.weight_bits, c.act_bits) for c in combos if c.sparsity == 0.0}
    assert (2, 8) in pairs and (2, 2) in pairs and (8, 2) in pairs
    free = [s for s in problem.space.layers if not s.pinned]
    w2a8 = next(c for c in combos if (c.weight_bits, c.act_bits, c.sparsity) == (2, 8, 0.0))
    for s, (_, lp) in zip(problem.space.layers, w2a8.policy, strict=True):
        if s.pinned:  # first and last layer stay at the bits the space pins them to
            assert set(lp.weight_bits) == {8} and lp.act_bits == 8
        else:
            assert set(lp.weight_bits) == {2} and lp.act_bits == 8
    assert len(free) == len(problem.space.layers) - 2
    assert len({c.policy.key() for c in combos}) == len(combos)


def test_every_combination_of_the_space_is_listed(problem: Problem) -> None:
    free = [s for s in problem.space.layers if not s.pinned]
    n_w = len(set.intersection(*(set(s.nonzero_bits) for s in free)))
    n_a = len(set.intersection(*(set(s.act_bits) for s in free)))
    n_sp = len(set().union(*(set(s.sparsity_levels) for s in free)))
    assert len(uniform_combinations(problem.space)) == n_w * n_a * n_sp


@pytest.mark.parametrize("text", ["size<=0.0625x", "bitops<=0.01x", "size<=0.1x,bitops<=0.02x"])
def test_feasible_ones_meet_the_budget_and_none_is_missed(problem: Problem, text: str) -> None:
    cost_model = CostModel(problem.analysis, problem.space)
    bound = Budget.parse(text).bind(cost_model)
    fitting = feasible_uniform(problem.space, cost_model, bound)
    assert fitting
    for choice in fitting:
        assert choice.costs == cost_model.price(choice.policy)
        assert bound.feasible(cost_model.price(choice.policy))
    kept = {c.policy.key() for c in fitting}
    for choice in uniform_combinations(problem.space):
        if choice.policy.key() not in kept:
            assert not bound.feasible(cost_model.price(choice.policy))


def test_size_budget_admits_low_weight_bits_with_wide_activations(problem: Problem) -> None:
    cost_model = CostModel(problem.analysis, problem.space)
    bound = Budget.parse("size<=0.0625x").bind(cost_model)
    labels = {c.label for c in feasible_uniform(problem.space, cost_model, bound)}
    # activations cost nothing in size: whenever W2A2 fits, W2A8 fits too
    assert any(lbl.startswith("W2A2") for lbl in labels)
    assert {lbl.replace("W2A2", "W2A8") for lbl in labels if lbl.startswith("W2A2")} <= labels


def test_round_trip(problem: Problem) -> None:
    from agents.baselines import UniformChoice

    cost_model = CostModel(problem.analysis, problem.space)
    choice = feasible_uniform(problem.space, cost_model, Budget.parse("size<=0.1x").bind(cost_model))[0]
    assert UniformChoice.from_dict(choice.to_dict()) == choice


def test_layer_level_enumeration_is_complete_and_valid() -> None:
    task = tiny()
    pinned = tuple(n for n in Problem.from_task(task).space.names if not n.startswith("layer2"))
    space = Problem.from_task(task, SpaceConfig(weight_bits=(0, 2, 8), act_bits=(4, 8), n_groups=2, pinned=pinned,
                                                max_sparsity=0.25, sparsity_step=0.25)).space
    policies = list(enumerate_layer_policies(space))
    assert len({p.key() for p in policies}) == len(policies)
    for p in policies:
        space.validate(p)
    free = [s for s in space.layers if not s.pinned]
    # no more than the product of per-layer choices, and at least all unpruned combinations
    upper = 1
    for s in free:
        upper *= len(s.sparsity_levels) * len(s.nonzero_bits) * len(s.act_bits)
    assert 2 ** (2 * len(free)) <= len(policies) <= upper
    with pytest.raises(ConfigError, match="raise the limit"):
        list(enumerate_layer_policies(space, limit=10))
