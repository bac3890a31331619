"""Cost model: hand-computed prices, coupling, pruning of downstream inputs, vectorised pricing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from automl.analysis import analyse
from automl.analysis.prune import prune_model
from automl.cost import CostModel, Costs, load_profiles
from automl.errors import PolicyError
from search_spaces import LayerPolicy, Policy, SearchSpace, SpaceConfig


class TwoLayer(nn.Module):
    """conv 1->4 (3x3, pad 1, BN folded) on 1x4x4, flatten, fc 64->3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.relu(self.bn(self.conv(x)))))


def within_max_sparsity(space: SearchSpace, policy: Policy) -> bool:
    """Whether every coupled group's union of pruned channels respects max_sparsity."""
    for members in space.coupled().values():
        pruned = np.zeros(space.layer(members[0]).out_channels, dtype=bool)
        for m in members:
            pruned |= np.asarray(policy[m].weight_bits) == 0
        if pruned.sum() > min(space.layer(m).max_pruned for m in members):
            return False
    return True


@pytest.fixture
def two_layer() -> tuple[CostModel, SearchSpace]:
    analysis = analyse(TwoLayer(), torch.zeros(1, 1, 4, 4))
    space = SearchSpace.build(
        analysis, SpaceConfig(weight_bits=(0, 2, 4, 8, 32), act_bits=(4, 8, 32), n_groups=None, pin_first_last=False)
    )
    return CostModel(analysis, space), space


def test_two_layer_prices_match_hand_computation(two_layer):
    cm, _ = two_layer
    policy = Policy((("conv", LayerPolicy(8, (8, 4, 0, 32))), ("fc", LayerPolicy(4, (2, 4, 8)))))
    costs = cm.price(policy)
    # conv: 3 kept channels x 9 weights: codes at 8+4 bits in one stream padded to a byte (108 -> 112
    # bits), the float row at 32; 2 scales (the 32-bit channel has none), 3 folded biases, 3 bit bytes.
    conv_bits = 112 + 9 * 32 + 2 * 32 + 3 * 32 + 3 * 8
    # fc: reads 3 kept channels x 16 positions = 48 features; 3 outputs at 2+4+8 bits, 3 scales, 3 biases, 3 bit bytes.
    fc_bits = 48 * (2 + 4 + 8) + 3 * 32 + 3 * 32 + 3 * 8
    assert costs.size_bytes == (conv_bits + fc_bits) / 8 == 184
    assert costs.macs == 16 * 3 * 9 + 3 * 48 == 576
    assert costs.bitops == 16 * 9 * (8 + 4 + 32) * 8 + 48 * (2 + 4 + 8) * 4 == 53376
    # conv: 16 inputs at 8 bits + 48 outputs stored at fc's 4 bits = 40 B; fc: 48 x 4 + 3 x 32 bits = 36 B.
    assert costs.peak_act_bytes == 40


def test_float_model_counts_every_weight_and_folded_bias_at_32_bits(two_layer):
    cm, _ = two_layer
    f = cm.float_costs()
    assert f.size_bytes == (4 * 9 * 32 + 4 * 32 + 3 * 64 * 32 + 3 * 32) / 8 + 4 + 3 == 947  # + a bit byte per channel
    with_header = CostModel(cm.analysis, cm.space, container_bytes=1000)
    assert with_header.float_costs().size_bytes == 1947
    assert with_header.price(cm.cheapest_policy()).size_bytes == cm.price(cm.cheapest_policy()).size_bytes + 1000
    assert f.macs == cm.analysis.total_macs == 768
    assert f.bitops == 768 * 32 * 32
    assert f.latency_ms == ()


def test_full_float_policy_costs_the_float_model(tiny_resnet):
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis, SpaceConfig(pinned_bits=32, act_bits=(8, 32)))
    cm = CostModel(analysis, space, load_profiles(["bitserial", "accel_roofline"]))
    costs = cm.price(space.uniform(32, 32))
    assert costs == cm.float_costs()
    params = sum(lay.weight_params + lay.out_channels for lay in analysis.layers)  # weights + folded biases
    assert costs.size_bytes == params * 4 + sum(lay.out_channels for lay in analysis.layers)  # + bit bytes
    assert costs.macs == analysis.total_macs


def _pruned_residual(tiny_resnet):
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis, SpaceConfig(weight_bits=(0, 32), act_bits=(32,), n_groups=None, pinned_bits=32))
    group = next(
        g for g in analysis.groups if len(g.producers) > 1 and all(space.layer(n).prunable for n in g.producers)
    )
    policy = space.uniform(32, 32)
    # Prune channel 0 in one producer and channel 1 in another: the network prunes both everywhere.
    first, second = group.producers[0], group.producers[1]
    policy = policy.replace(first, LayerPolicy(32, (0,) + policy[first].weight_bits[1:]))
    bits = list(policy[second].weight_bits)
    bits[1] = 0
    return analysis, space, group, policy.replace(second, LayerPolicy(32, tuple(bits)))


def test_pruned_residual_network_size_counts_removed_downstream_inputs(tiny_resnet):
    analysis, space, group, policy = _pruned_residual(tiny_resnet)
    cm = CostModel(analysis, space)
    costs = cm.price(policy)
    pruned = prune_model(tiny_resnet, analysis, policy)
    convs = [m for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # Float policy: weights + one (folded) bias per output channel, all at 32 bits, + one bit byte per channel.
    expected = sum(m.weight.numel() * 4 + m.weight.shape[0] * 5 for m in convs)
    assert costs.size_bytes == expected
    assert costs.macs == analyse(pruned, torch.zeros(1, 1, 28, 28)).total_macs
    # Removing only the producers' rows would overcount: every consumer lost 2 input channels.
    rows_only = sum(
        lay.weight_params // lay.out_channels * 2 + 2 for lay in analysis.layers if lay.name in group.producers
    )
    inputs = sum(
        lay.weight_params // lay.in_channels * 2 for lay in analysis.layers if lay.name in group.consumers
    )
    assert costs.size_bytes == cm.float_costs().size_bytes - (rows_only + inputs) * 4 - 2 * len(group.producers)
    assert cm.price(space.resolve(policy)) == costs


def test_price_batch_matches_price(tiny_resnet, rng):
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis)
    cm = CostModel(analysis, space, load_profiles(["bitserial", "accel_roofline"]))
    policies = [space.sample(rng) for _ in range(20)]
    weight_bits = [np.array([p[name].weight_bits for p in policies]) for name in space.names]
    act = np.array([[lp.act_bits for _, lp in p] for p in policies])
    table = cm.price_batch(weight_bits, act)
    assert set(table) == set(cm.metrics)
    for i, p in enumerate(policies):
        costs = cm.price(p)
        for metric in cm.metrics:
            assert table[metric][i] == pytest.approx(costs.value(metric), rel=1e-12)


def test_costs_are_monotone_and_cheapest_is_cheapest(tiny_resnet, rng):
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis)
    cm = CostModel(analysis, space, load_profiles(["bitserial", "accel_roofline"]))
    cheapest = cm.price(cm.cheapest_policy())
    space.validate(cm.cheapest_policy())
    checked = 0
    while checked < 50:
        policy = space.sample(rng)
        if not within_max_sparsity(space, policy):
            continue  # producers pruning different channels can prune a whole group: not a network
        checked += 1
        costs = cm.price(policy)
        for metric in cm.metrics:
            assert cheapest.value(metric) <= costs.value(metric) * (1 + 1e-12)
    low, high = cm.price(space.uniform(4, 4)), cm.price(space.uniform(8, 8))
    assert all(low.value(m) < high.value(m) for m in ("size", "bitops", "peak_act", "latency@bitserial"))
    assert low.macs == high.macs


def test_depthwise_layer_shrinks_with_its_group(plain_cnn):
    analysis = analyse(plain_cnn, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis, SpaceConfig(n_groups=None, pin_first_last=False))
    cm = CostModel(analysis, space)
    dw = next(lay for lay in analysis.layers if lay.depthwise)
    base = space.uniform(8, 8)
    pruned = base.replace(dw.name, LayerPolicy(8, (0, 0) + base[dw.name].weight_bits[2:]))
    saved = cm.price(base).macs - cm.price(pruned).macs
    per_channel_dw = dw.macs // dw.out_channels
    fc1 = analysis.layer("fc1")
    per_channel_fc1 = fc1.macs // fc1.in_channels * fc1.in_segments[0].features_per_channel
    producer = analysis.layer(analysis.groups[dw.out_group].producers[0])
    per_channel_producer = producer.macs // producer.out_channels
    assert saved == 2 * (per_channel_dw + per_channel_fc1 + per_channel_producer)


def test_price_rejects_a_policy_of_another_model(two_layer, tiny_resnet):
    cm, _ = two_layer
    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    other = SearchSpace.build(analysis).uniform(8)
    with pytest.raises(PolicyError, match="another model"):
        cm.price(other)
    with pytest.raises(PolicyError, match="shape"):
        cm.price_batch([np.zeros((2, 4), dtype=int), np.zeros((2, 2), dtype=int)], np.zeros((2, 2), dtype=int))


def test_costs_round_trip_through_json():
    costs = Costs(1.5, 2.0, 3.0, 4.0, (("bitserial", 0.25),))
    assert Costs.from_dict(json.loads(json.dumps(costs.to_dict()))) == costs
    assert costs.value("latency@bitserial") == 0.25
    with pytest.raises(Exception, match="no latency was priced on profile 'cpu'"):
        costs.value("latency@cpu")
