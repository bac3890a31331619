"""The integer program: feasible, exact, and no worse than any random feasible policy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from automl.analysis import analyse
from automl.cost import CostModel, load_profile, load_profiles
from automl.errors import InfeasibleBudget
from automl.problem.budget import Budget, solve_ilp, solve_ilp_detailed
from automl.problem.sensitivity import Sensitivities
from automl.reference.models import ResNet
from search_spaces import Policy, SearchSpace, SpaceConfig


def synthetic(name: str, s: float, w: int, a: int) -> float:
    """Layer-dependent damage, growing with sparsity and with fewer bits."""
    rng = np.random.default_rng(sum(map(ord, name)))
    scale, wq, aq = rng.uniform(0.2, 2.0, size=3)
    quant = (0.0 if w == 32 else wq * 4.0 ** (2 - w)) + (0.0 if a == 32 else aq * 4.0 ** (2 - a))
    return scale * ((1 - s) * quant + 3.0 * s**1.5)


@pytest.fixture(scope="module")
def problem() -> tuple[SearchSpace, CostModel, Sensitivities]:
    torch.manual_seed(0)
    analysis = analyse(ResNet(8, width=4), torch.zeros(1, 1, 28, 28))
    # One bit-width per layer (n_groups=1): the program's choices are exactly the space's.
    space = SearchSpace.build(
        analysis, SpaceConfig(weight_bits=(0, 2, 4, 8), act_bits=(2, 4, 8), n_groups=1, sparsity_step=0.25)
    )
    cm = CostModel(analysis, space, load_profiles(["bitserial", "accel_roofline"]))
    return space, cm, Sensitivities.from_callable(space, synthetic)


BUDGETS = [
    "size<=0.12x, bitops<=0.04x",
    "size<=0.15x, latency<=0.3x@bitserial, peak_act<=0.2x",
    "macs<=0.7x, latency<=0.95x@accel_roofline, size<=0.2x",
]


@pytest.mark.parametrize("text", BUDGETS)
def test_ilp_is_feasible_exact_and_beats_1000_random_feasible_policies(problem, text):
    space, cm, sens = problem
    bound = Budget.parse(text).bind(cm)
    result = solve_ilp_detailed(space, cm, bound, sens)
    space.validate(result.policy)
    assert bound.feasible(cm.price(result.policy))
    assert result.status == "optimal" and result.rounds == 1  # priced exactly: no tightening was needed
    rng = np.random.default_rng(0)
    feasible = [p for p in (space.sample(rng) for _ in range(1000)) if bound.feasible(cm.price(p))]
    assert len(feasible) >= 20
    best_random = min(sens.policy_value(p, space) for p in feasible)
    assert result.objective <= best_random + 1e-9
    assert result.objective == pytest.approx(sens.policy_value(result.policy, space))


def test_ilp_tighter_budget_costs_more_sensitivity(problem):
    space, cm, sens = problem
    loose = solve_ilp_detailed(space, cm, Budget.parse("size<=0.2x").bind(cm), sens)
    tight = solve_ilp_detailed(space, cm, Budget.parse("size<=0.1x").bind(cm), sens)
    assert tight.objective >= loose.objective
    assert solve_ilp(space, cm, Budget.parse("size<=0.1x").bind(cm), sens) == tight.policy


def test_ilp_accepts_a_callable_and_records_its_result(problem):
    space, cm, _ = problem
    result = solve_ilp_detailed(space, cm, Budget.parse("bitops<=0.05x").bind(cm), synthetic)
    d = result.to_dict()
    assert d["status"] == "optimal" and d["variables"] > 0 and "layers" in d["policy"]


def test_ilp_matches_exhaustive_search_on_a_small_space():
    from itertools import product

    from tests.test_cost import TwoLayer

    analysis = analyse(TwoLayer(), torch.zeros(1, 1, 4, 4))
    space = SearchSpace.build(
        analysis,
        SpaceConfig(weight_bits=(0, 2, 4, 8), act_bits=(4, 8), n_groups=1, pin_first_last=False, sparsity_step=0.25),
    )
    # The shipped profile's fixed overheads would swamp a 2-layer network's latency.
    lean = replace(load_profile("bitserial"), name="lean", layer_overhead_us=0.0, network_overhead_us=0.0)
    cm = CostModel(analysis, space, [lean])
    sens = Sensitivities.from_callable(space, synthetic)
    choices = [
        [space.decode(s.name, lv, [w], a) for lv, w, a in product(s.sparsity_levels, s.nonzero_bits, s.act_bits)
         if int(round(lv * s.out_channels)) <= s.max_pruned]
        for s in space.layers
    ]
    for text in ("size<=0.3x", "bitops<=0.02x, peak_act<=0.5x", "latency<=0.6x@lean, size<=0.5x", "latency<=0.3x@lean"):
        bound = Budget.parse(text).bind(cm)
        best = min(
            sens.policy_value(p, space)
            for p in (Policy(tuple(zip(space.names, combo, strict=True))) for combo in product(*choices))
            if bound.feasible(cm.price(p))
        )
        assert solve_ilp_detailed(space, cm, bound, sens).objective == pytest.approx(best)


def test_ilp_reports_limits_no_policy_meets(problem):
    space, cm, sens = problem
    bound = Budget.parse("size<=0.1x").bind(cm)
    with pytest.raises(InfeasibleBudget, match="size <= 10"):
        solve_ilp(space, cm, replace(bound, limits=(("size", 10.0),)), sens)
