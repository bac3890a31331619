"""Budgets: grammar, binding against the float model, feasibility and its error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from automl.analysis import analyse
from automl.cost import CostModel, load_profiles
from automl.errors import BudgetError, InfeasibleBudget
from automl.problem.budget import GRAMMAR, BoundBudget, Budget, Constraint
from search_spaces import SearchSpace, SpaceConfig


@pytest.fixture
def cost_model(tiny_resnet) -> CostModel:
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    return CostModel(analysis, SearchSpace.build(analysis), load_profiles(["bitserial", "accel_roofline"]))


@pytest.mark.parametrize(
    ("text", "metric", "limit", "relative"),
    [
        ("size<=0.125x", "size", 0.125, True),
        ("size <= 0.2MB", "size", 0.2e6, False),
        ("size<=3KiB", "size", 3 * 1024, False),
        ("size<=512B", "size", 512, False),
        ("bitops<=0.5G", "bitops", 0.5e9, False),
        ("macs<=0.6x", "macs", 0.6, True),
        ("macs<=12M", "macs", 12e6, False),
        ("latency<=2ms@bitserial", "latency@bitserial", 2.0, False),
        ("latency@accel_roofline<=250us", "latency@accel_roofline", 0.25, False),
        ("latency<=40%@bitserial", "latency@bitserial", 0.4, True),
        ("peak_act<=64KB", "peak_act", 64e3, False),
        ("latency<=1.5ms@/tmp/some profile.yaml".replace(" ", "_"), "latency@/tmp/some_profile.yaml", 1.5, False),
    ],
)
def test_constraint_grammar(text, metric, limit, relative):
    c = Constraint.parse(text)
    assert (c.metric, c.relative, c.text) == (metric, relative, text)
    assert c.limit == pytest.approx(limit)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("size<0.1x", "expected '<metric> <= <limit>'"),
        ("sizes<=1MB", "unknown metric 'sizes'"),
        ("latency<=2ms", "needs a profile"),
        ("size<=3ms", "unit 'ms' does not fit size"),
        ("bitops<=0.5Q", "unit 'Q' does not fit bitops"),
        ("size<=0x", "must be positive"),
        ("size<=1MB@bitserial", "only latency takes a profile"),
        ("size<=", "expected"),
    ],
)
def test_malformed_budget_quotes_the_text_and_shows_the_grammar(text, why):
    with pytest.raises(BudgetError) as info:
        Budget.parse(text)
    message = str(info.value)
    assert repr(text) in message and why in message
    assert GRAMMAR in message


def test_budget_parses_lists_and_comma_separated_strings_and_round_trips():
    a = Budget.parse("size<=0.1x, bitops<=1G; latency<=2ms@bitserial")
    b = Budget.parse(["size<=0.1x", "bitops<=1G", "latency<=2ms@bitserial"])
    assert a == b and len(a.constraints) == 3
    assert a.profile_refs == ("bitserial",)
    assert Budget.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    with pytest.raises(BudgetError, match="at least one constraint"):
        Budget.parse([])


def test_bind_resolves_relative_limits_against_the_float_model(cost_model):
    bound = Budget.parse("size<=0.1x, macs<=0.9x, latency<=0.5x@bitserial, size<=0.2x").bind(cost_model)
    f = cost_model.float_costs()
    limits = dict(bound.limits)
    assert limits["size"] == pytest.approx(0.1 * f.size_bytes)  # two size limits merge into the tighter
    assert limits["macs"] == pytest.approx(0.9 * f.macs)
    assert limits["latency@bitserial"] == pytest.approx(0.5 * f.value("latency@bitserial"))
    assert BoundBudget.from_dict(json.loads(json.dumps(bound.to_dict()))) == bound


def test_feasible_violations_and_batch_agree(cost_model, rng):
    bound = Budget.parse("size<=0.12x, bitops<=0.05x").bind(cost_model)
    space = cost_model.space
    policies = [space.sample(rng) for _ in range(30)]
    weight_bits = [np.array([p[n].weight_bits for p in policies]) for n in space.names]
    act = np.array([[lp.act_bits for _, lp in p] for p in policies])
    batch = bound.feasible_batch(cost_model.price_batch(weight_bits, act))
    single = [bound.feasible(cost_model.price(p)) for p in policies]
    assert batch.tolist() == single and any(single) and not all(single)
    for p, ok in zip(policies, single, strict=True):
        v = bound.violations(cost_model.price(p))
        assert (not v) == ok and all(x > 0 for x in v.values())


def test_infeasible_budget_names_the_cheapest_achievable_value(cost_model):
    cheapest = cost_model.price(cost_model.cheapest_policy())
    with pytest.raises(InfeasibleBudget) as info:
        Budget.parse("size<=200B, macs<=0.99x").bind(cost_model)
    message = str(info.value)
    assert "size<=200B cannot be met" in message and "macs" not in message.split("(")[0]
    assert f"{cheapest.size_bytes:.4g} B" in message
    assert "pinned" in message and "raise the budget" in message


def test_infeasible_budget_suggests_allowing_pruning(tiny_resnet):
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis, SpaceConfig(allow_pruning=False, weight_bits=(4, 8), act_bits=(4, 8)))
    cm = CostModel(analysis, space)
    with pytest.raises(InfeasibleBudget, match=r"allow pruning .*lower the minimum weight bits \(now 4\)"):
        Budget.parse("size<=0.05x").bind(cm)


def test_bind_needs_the_latency_profile_in_the_cost_model(tiny_resnet):
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    cm = CostModel(analysis, SearchSpace.build(analysis))
    budget = Budget.parse("latency<=0.5x@bitserial")
    with pytest.raises(BudgetError, match="needs hardware profile 'bitserial'.*load_profiles"):
        budget.bind(cm)
    cm = CostModel(analysis, cm.space, budget.load_profiles())
    assert budget.bind(cm).metrics == ("latency@bitserial",)
