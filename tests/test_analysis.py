"""Model analysis, channel coupling and physical pruning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from automl.analysis import ModelAnalysis, analyse, mask_model, prune_model
from automl.errors import AnalysisError, PolicyError
from search_spaces import LayerPolicy, SearchSpace, SpaceConfig

from .conftest import randomise_batchnorm


class ConcatNet(nn.Module):
    """Two branches concatenated, then a LayerNorm-free head with a float-only LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 6, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.mix = nn.Conv2d(10, 8, 1)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.cat([torch.relu(self.bn_a(self.a(x))), torch.relu(self.b(x))], dim=1)
        y = self.mix(y).mean(dim=(2, 3))
        return self.head(self.norm(y))


def test_layer_records_of_plain_cnn(plain_cnn):
    a = analyse(plain_cnn, torch.zeros(1, 1, 28, 28))
    first = a.layer("features.0")
    assert (first.in_channels, first.out_channels, first.kernel_size) == (1, 4, (3, 3))
    assert first.out_shape == (4, 28, 28)
    assert first.macs == 4 * 28 * 28 * 9
    assert first.params == 4 * 9 + 4
    dw = a.layer("features.8")
    assert dw.depthwise and dw.macs == 8 * 7 * 7 * 9
    fc1 = a.layer("fc1")
    assert fc1.kind == "linear" and fc1.macs == 72 * 32
    assert fc1.in_segments[0].features_per_channel == 9, "flatten of 8x3x3 feeds 9 features per channel"
    assert a.names[0] == "features.0" and a.names[-1] == "fc2"


def test_depthwise_conv_is_coupled_with_its_input(plain_cnn):
    a = analyse(plain_cnn, torch.zeros(1, 1, 28, 28))
    assert a.layer("features.8").out_group == a.layer("features.4").out_group


def test_residual_streams_are_coupled(tiny_resnet):
    a = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    g = a.groups[a.layer("layer2.0.conv2").out_group]
    assert set(g.producers) == {"layer2.0.conv2", "layer2.0.shortcut.0"}
    assert "layer2.0.shortcut.1" in g.followers and "layer3.0.conv1" in g.consumers
    assert not a.groups[a.layer("fc").out_group].prunable


def test_non_quantizable_layers_are_reported_not_skipped():
    a = analyse(ConcatNet().eval(), torch.zeros(1, 1, 8, 8))
    assert ("norm", "LayerNorm", 64) in a.unquantized  # weight and bias, 8 floats each, in bytes
    assert "LayerNorm" in a.report()
    mix = a.layer("mix")
    assert [s.channels for s in mix.in_segments] == [4, 6]
    assert a.layer("a").folded_bn == "bn_a"


def test_no_quantizable_layer_is_a_clear_error():
    with pytest.raises(AnalysisError, match="no Conv1d, Conv2d or Linear"):
        analyse(nn.Sequential(nn.ReLU(), nn.Flatten()), torch.zeros(1, 3, 4, 4))


def test_untraceable_model_is_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            if x.sum() > 0:
                return self.c(x)
            return x

    with pytest.raises(AnalysisError, match="could not trace"):
        analyse(Branchy(), torch.zeros(1, 1, 4, 4))


def test_analysis_round_trips_through_json(tiny_resnet):
    import json

    a = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    assert ModelAnalysis.from_dict(json.loads(json.dumps(a.to_dict()))) == a


@pytest.mark.parametrize("model_name", ["tiny_resnet", "plain_cnn", "concat"])
def test_physically_pruned_network_matches_masked_network(model_name, request):
    model = randomise_batchnorm(ConcatNet()) if model_name == "concat" else request.getfixturevalue(model_name)
    size = 8 if model_name == "concat" else 28
    x = torch.randn(4, 1, size, size)
    a = analyse(model, x)
    space = SearchSpace.build(a, SpaceConfig(max_sparsity=0.5))
    rng = np.random.default_rng(1)
    for _ in range(5):
        policy = space.resolve(space.sample(rng))
        small, masked = prune_model(model, a, policy), mask_model(model, a, policy)
        n_small = sum(p.numel() for p in small.parameters())
        n_full = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            out_small, out_masked = small(x), masked(x)
        assert (out_small - out_masked).abs().max() <= 1e-5
        if policy.channel_sparsity() > 0:
            assert n_small < n_full


def test_pruning_a_residual_channel_prunes_it_in_every_member(tiny_resnet):
    x = torch.randn(2, 1, 28, 28)
    a = analyse(tiny_resnet, x)
    space = SearchSpace.build(a, SpaceConfig(pin_first_last=False))
    policy = space.uniform(8)
    bits = list(policy["layer2.0.conv2"].weight_bits)
    bits[1] = 0
    policy = space.resolve(policy.replace("layer2.0.conv2", LayerPolicy(8, tuple(bits))))
    assert policy["layer2.0.shortcut.0"].weight_bits[1] == 0
    small = prune_model(tiny_resnet, a, policy)
    assert small.layer2[0].shortcut[0].out_channels == 7
    assert small.layer2[0].shortcut[1].num_features == 7
    assert small.layer3[0].conv1.in_channels == 7


def test_pruning_an_output_layer_is_refused(tiny_resnet):
    a = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(a, SpaceConfig(pin_first_last=False))
    policy = space.uniform(8)
    bits = (0,) + policy["fc"].weight_bits[1:]
    bad = policy.replace("fc", LayerPolicy(8, bits))
    with pytest.raises(PolicyError, match="fc"):
        prune_model(tiny_resnet, a, bad)
