"""The integer program's decision table prices every decision as the cost model prices the policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automl.analysis import analyse
from automl.cost import CostModel, load_profiles
from automl.cost.choices import build_choices
from automl.reference.models import MobileNetV2Small, ResNet
from search_spaces import SearchSpace, SpaceConfig
from search_spaces.policy import Policy


@pytest.mark.parametrize("model", [lambda: ResNet(8, width=4), lambda: MobileNetV2Small()], ids=["resnet", "mobilenet"])
def test_every_decision_costs_what_the_cost_model_prices_for_its_policy(model):
    torch.manual_seed(0)
    analysis = analyse(model(), torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis, SpaceConfig(weight_bits=(0, 2, 4, 8), act_bits=(4, 8), n_groups=1,
                                                    sparsity_step=0.25))
    cm = CostModel(analysis, space, load_profiles(["bitserial", "accel_roofline"]))
    table = build_choices(space, cm, ["size", "macs", "bitops", "latency@bitserial", "latency@accel_roofline"],
                          lambda li, lo, wb, ab: np.zeros(len(lo)))
    checked = 0
    rng = np.random.default_rng(0)
    for li, choices in enumerate(table.layers):
        for r in rng.choice(choices.k, size=min(choices.k, 6), replace=False):
            lo, lin, wb, ab = float(choices.lo[r]), float(choices.li[r]), int(choices.wb[r]), int(choices.ab[r])
            layers = []
            for m, s in enumerate(space.layers):
                level = lo if s.coupled_group == choices.g_out else lin if s.coupled_group == choices.g_in else 0.0
                bits = wb if m == li else s.nonzero_bits[-1]
                act = ab if m == li else s.act_bits[-1]
                layers.append((s.name, space.decode(s.name, level, [bits] * s.n_groups, act)))
            policy = space.resolve(Policy(tuple(layers)))
            bits, act = cm.policy_arrays(policy)
            batch = cm.layer_batch(bits[None, :], act[None, :])
            assert choices.cost["size"][r] == pytest.approx(cm.layer_size_bits(batch)[0, li] / 8.0)
            assert choices.cost["macs"][r] == pytest.approx(batch.macs[0, li])
            for p in cm.profiles:
                compute, memory, overhead = p.layer_terms(batch)
                assert choices.cost[f"{p.name}:compute"][r] == pytest.approx(compute[0, li])
                assert choices.cost[f"{p.name}:memory"][r] == pytest.approx(memory[0, li])
                assert choices.cost[f"{p.name}:overhead"][r] == pytest.approx(overhead[0, li])
            checked += 1
    assert checked >= 20


def test_the_table_decodes_each_pair_of_group_levels_once_not_each_decision(monkeypatch):
    """The whole-network decode is the table's cost: it runs once per (output level, input level)
    of a layer, not once per decision (x weight bits x activation bits), so it grows with the
    network, not with the network times the bit choices."""
    torch.manual_seed(0)
    analysis = analyse(ResNet(8, width=4), torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis, SpaceConfig(n_groups=1))
    cm = CostModel(analysis, space)
    rows = []
    decode = cm.layer_batch
    monkeypatch.setattr(cm, "layer_batch", lambda bits, act, nm=None: rows.append(len(bits)) or decode(bits, act, nm))
    build_choices(space, cm, ["size"], lambda li, lo, wb, ab: np.zeros(len(lo)))
    levels = max(len(s.sparsity_levels) for s in space.layers)
    assert len(rows) == len(space.layers)
    assert max(rows) <= levels**2 < len(space.layers[1].nonzero_bits) * len(space.layers[1].act_bits) * levels
