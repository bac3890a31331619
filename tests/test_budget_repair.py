"""Repair: every policy comes back feasible; feasible ones come back untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automl.analysis import analyse
from automl.cost import CostModel, load_profiles
from automl.errors import InfeasibleBudget
from automl.problem.budget import BoundBudget, Budget, Constraint, repair
from automl.problem.sensitivity import Sensitivities
from automl.reference.models import ResNet
from search_spaces import SearchSpace

METRICS = ("size", "bitops", "macs", "peak_act", "latency@bitserial", "latency@accel_roofline")


@pytest.fixture(scope="module")
def setup() -> tuple[CostModel, Sensitivities]:
    torch.manual_seed(0)
    analysis = analyse(ResNet(8, width=4), torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis)
    cm = CostModel(analysis, space, load_profiles(["bitserial", "accel_roofline"]))
    return cm, Sensitivities.heuristic(space)


def _budget(cm: CostModel, fractions: dict[str, float]) -> BoundBudget:
    """Limits between the cheapest policy's cost (fraction 0) and the float model's (1)."""
    cheap, full = cm.price(cm.cheapest_policy()), cm.float_costs()
    constraints = []
    for metric, u in fractions.items():
        limit = cheap.value(metric) + u * (full.value(metric) - cheap.value(metric))
        constraints.append(Constraint(metric, limit, False, f"{metric}<={limit}"))
    return Budget(tuple(constraints)).bind(cm)


budgets = st.dictionaries(st.sampled_from(METRICS), st.floats(0.0, 0.6), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fractions=budgets, seed=st.integers(0, 2**31 - 1))
def test_repair_always_returns_a_feasible_valid_policy(setup, fractions, seed):
    cm, sens = setup
    bound = _budget(cm, fractions)
    policy = cm.space.sample(np.random.default_rng(seed))
    fixed, record = repair(policy, cm, bound, sens)
    assert bound.feasible(cm.price(fixed))
    cm.space.validate(fixed)
    assert record.changed == (fixed is not policy)
    if record.changed:
        assert record.steps and record.changes and record.proxy_increase > 0
        assert record.violations and not bound.violations(record.after)
        json.dumps(record.to_dict())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fractions=budgets, seed=st.integers(0, 2**31 - 1))
def test_repair_returns_feasible_policies_unchanged(setup, fractions, seed):
    cm, sens = setup
    bound = _budget(cm, fractions)
    rng = np.random.default_rng(seed)
    candidates = [cm.space.sample(rng) for _ in range(50)]
    policy = next((p for p in candidates if bound.feasible(cm.price(p))), cm.cheapest_policy())
    fixed, record = repair(policy, cm, bound, sens)
    assert fixed is policy and not record.changed and record.steps == ()


def test_repair_is_deterministic_and_spends_little_sensitivity(setup):
    cm, sens = setup
    bound = Budget.parse("size<=0.1x, bitops<=0.05x").bind(cm)
    rng = np.random.default_rng(3)
    infeasible = [p for p in (cm.space.sample(rng) for _ in range(40)) if not bound.feasible(cm.price(p))][:5]
    assert infeasible
    for policy in infeasible:
        a, ra = repair(policy, cm, bound, sens)
        b, rb = repair(policy, cm, bound, sens)
        assert a == b and ra == rb
        # Greedy by damage per unit of cost: no worse than lowering everything to the cheapest policy.
        assert sens.policy_value(a, cm.space) <= sens.policy_value(cm.cheapest_policy(), cm.space)


def test_repair_prefers_insensitive_layers(setup):
    cm, _ = setup
    space = cm.space
    fragile = space.names[1]

    def fn(name: str, s: float, w: int, a: int) -> float:
        damage = s + (0 if w == 32 else 2.0 ** -w) + (0 if a == 32 else 2.0 ** -a)
        return damage * (1000.0 if name == fragile else 1.0)

    bound = Budget.parse("bitops<=0.03x").bind(cm)
    policy = space.uniform(8, 8)
    fixed, record = repair(policy, cm, bound, fn)
    assert record.changed and fixed[fragile] == policy[fragile]


def test_repair_raises_when_even_the_cheapest_policy_does_not_fit(setup):
    cm, sens = setup
    cheap = cm.price(cm.cheapest_policy())
    bound = BoundBudget(Budget.parse("size<=1B"), (("size", cheap.size_bytes / 2),))
    with pytest.raises(InfeasibleBudget, match="cheapest policy costs size"):
        repair(cm.space.uniform(8), cm, bound, sens)
