"""Structure the analysis handles instead of blocking: SE gating, and what it still blocks, named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from automl.analysis import analyse, mask_model, prune_model
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.task import Task
from automl.export.ampq import export_policy, load_exported
from search_spaces import SearchSpace, SpaceConfig

from .conftest import randomise_batchnorm


class SqueezeExcite(nn.Module):
    """torchvision's and timm's SE: squeeze conv, activation, excite conv, gate, times the input."""

    def __init__(self, channels: int, squeeze: int, gate: str) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        if self.gate == "sigmoid":
            s = torch.sigmoid(s)
        elif self.gate == "hardsigmoid":
            s = nn.functional.hardsigmoid(s)
        else:  # timm's hard_sigmoid: arithmetic around ReLU6
            s = F.relu6(s + 3.0) / 6.0
        return x * s


class SENet(nn.Module):
    def __init__(self, gate: str, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width, bias=False),
                                nn.BatchNorm2d(2 * width), nn.Hardswish())
        self.se = SqueezeExcite(2 * width, 4, gate)
        self.project = nn.Sequential(nn.Conv2d(2 * width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.project(self.se(self.dw(self.expand(h))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def _task(model: nn.Module) -> Task:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 12, 12, generator=gen)
    loader = DataLoader(TensorDataset(x, torch.randint(0, 10, (48,), generator=gen)), batch_size=16)
    return Task(model, torch.zeros(1, 1, 12, 12), loader, loader, loader, loader)


def _exports_and_prices(model, problem, pruned, x, tmp_path) -> None:
    """The pruned policy's .ampq file computes the quantized model, and its bytes are what the cost model prices."""
    ev = Evaluator(problem, EvalConfig())
    qmodel = ev.engine.apply(pruned)
    export_policy(qmodel, problem.analysis, pruned, tmp_path / "m.ampq", sample_input=x, float_model=ev.float_model,
                  repeats=1)
    with torch.no_grad():
        assert (load_exported(tmp_path / "m.ampq")(x) - qmodel(x)).abs().max() <= 1e-4
    # priced: the split BatchNorms' bytes shrink with their segments, and at full width are all there
    from automl.cost.model import CostModel
    from automl.quant.engine import fold_batchnorm

    cm = CostModel(problem.analysis, problem.space)
    folded, _ = fold_batchnorm(model, problem.analysis)
    real = sum(t.numel() * t.element_size() for t in folded.state_dict().values())
    assert cm.float_costs().size_bytes == pytest.approx(real + sum(lay.out_channels for lay in problem.analysis.layers))
    report = export_policy(qmodel, problem.analysis, pruned, tmp_path / "p.ampq", sample_input=x,
                           float_model=ev.float_model, cost_model=cm, repeats=1)
    assert abs(report.payload_bytes - report.predicted_bytes) <= 8 * len(problem.analysis.split_followers)


@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid", "hard_sigmoid_arithmetic"])
def test_se_gated_channels_prune_with_the_excite_layers_channel(gate, tmp_path):
    """A pruned channel of the gated map is zero whatever its gate, so the gated group is prunable
    and the excite convolution's matching output channel is pruned with it."""
    torch.manual_seed(0)
    model = randomise_batchnorm(SENet(gate))
    x = torch.randn(8, 1, 12, 12)
    a = analyse(model, x[:1])
    group = a.groups[a.layer("expand.0").out_group]
    assert group.prunable, group.reason
    assert set(group.producers) == {"expand.0", "dw.0", "se.fc2"}
    space = SearchSpace.build(a, SpaceConfig(max_sparsity=0.5))
    rng = np.random.default_rng(0)
    for _ in range(3):
        policy = space.resolve(space.sample(rng))
        small, masked = prune_model(model, a, policy), mask_model(model, a, policy)
        with torch.no_grad():
            assert (small(x) - masked(x)).abs().max() <= 1e-5
    pruned = space.resolve(space.uniform(8, 8, sparsity=0.5))
    assert prune_model(model, a, pruned).se.fc2.out_channels < 16
    _exports_and_prices(model, Problem.from_task(_task(model)), pruned, x, tmp_path)


class Gated(nn.Module):
    """A gate whose non-zero output a layer reads directly: pruning there would change the result."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.sigmoid(self.a(x)))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


class LayerScaled(nn.Module):
    """A per-channel parameter multiplied into a prunable map (ConvNeXt's layer scale, unnormalised)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(6, 1, 1))
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.relu(self.a(x)) * self.scale)
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


@pytest.mark.parametrize("model,reason", [(Gated, "sigmoid .* turns a pruned channel into a constant, and b reads it"),
                                          (LayerScaled, "per-channel constant scale")])
def test_what_still_blocks_pruning_is_named_with_the_layers_it_blocks(model, reason):
    torch.manual_seed(0)
    a = analyse(model(), torch.zeros(1, 1, 8, 8))
    group = a.groups[a.layer("a").out_group]
    assert not group.prunable
    import re

    assert re.search(reason, group.reason), group.reason
    assert re.search(rf"g{group.gid} \(a: 6 channels\) not prunable: .*{reason}", a.report()), a.report()


class DenseBlock(nn.Module):
    """DenseNet's pattern: each layer normalises the concatenation of every earlier output (BatchNorm, ReLU, conv)."""

    def __init__(self, growth: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.norms = nn.ModuleList(nn.BatchNorm2d(6 + i * growth) for i in range(layers))
        self.convs = nn.ModuleList(nn.Conv2d(6 + i * growth, growth, 3, padding=1) for i in range(layers))
        self.final = nn.BatchNorm2d(6 + layers * growth)
        self.head = nn.Linear(6 + layers * growth, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for norm, conv in zip(self.norms, self.convs, strict=True):
            features.append(conv(F.relu(norm(torch.cat(features, 1)))))
        h = F.relu(self.final(torch.cat(features, 1)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def test_batchnorm_on_a_concatenation_is_split_into_its_segments(tmp_path):
    """Each segment of the normalised concatenation shrinks with the group it comes from, so every
    growth layer's output channels are prunable (DenseNet's bottleneck convolutions were the only ones)."""
    torch.manual_seed(0)
    model = randomise_batchnorm(DenseBlock())
    x = torch.randn(8, 1, 12, 12)
    a = analyse(model, x[:1])
    for name in ("stem", "convs.0", "convs.1", "convs.2"):
        assert a.groups[a.layer(name).out_group].prunable, a.groups[a.layer(name).out_group].reason
    assert dict(a.split_followers)["final"] == tuple(a.layer("convs.2").in_segments) + (
        a.layer("head").in_segments[-1],)
    space = SearchSpace.build(a, SpaceConfig(max_sparsity=0.5, pin_first_last=False))
    rng = np.random.default_rng(0)
    for _ in range(3):
        policy = space.resolve(space.sample(rng))
        small, masked = prune_model(model, a, policy), mask_model(model, a, policy)
        with torch.no_grad():
            assert (small(x) - masked(x)).abs().max() <= 1e-5
    pruned = space.resolve(space.uniform(8, 8, sparsity=0.5))
    assert prune_model(model, a, pruned).final.num_features < 18
    _exports_and_prices(model, Problem.from_task(_task(model), SpaceConfig(max_sparsity=0.5, pin_first_last=False)),
                        pruned, x, tmp_path)
