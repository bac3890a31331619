"""Modules rewritten before analysis: attention and transformer layers, eval-identity modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import fx, nn
from torch.utils.data import DataLoader, TensorDataset

from automl.analysis import analyse, canonical_model, register_eval_identity
from automl.errors import AnalysisError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.task import Task
from automl.export import ort
from automl.export.ampq import export_policy, load_exported
from automl.export.onnx import ampq_to_onnx


class TokenClassifier(nn.Module):
    """A user's sequence classifier around ``nn.TransformerEncoder`` (tokens x features in)."""

    def __init__(self, batch_first: bool = True, norm_first: bool = False) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=24, dropout=0.1, batch_first=batch_first,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if not self.batch_first:
            return self.head(self.encoder(h.transpose(0, 1)).mean(dim=0))
        return self.head(self.encoder(h).mean(dim=1))


class AttentionPool(nn.Module):
    """``nn.MultiheadAttention`` called as most code calls it: need_weights left at True, weights unused."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x).transpose(0, 1)
        out, _ = self.attn(h, h, h, attn_mask=mask)
        return self.head(out.mean(dim=0))


def _task(model: nn.Module, n: int = 64) -> Task:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, 6, generator=gen)
    with torch.no_grad():
        y = model.eval()(x).argmax(dim=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    return Task(model, torch.zeros(1, 8, 6), loader, loader, loader, loader)


@pytest.mark.parametrize("make", [lambda: TokenClassifier(), lambda: TokenClassifier(False, True), AttentionPool],
                         ids=["encoder", "encoder-seq-first-norm-first", "mha"])
def test_attention_projections_are_quantized_layers_and_the_export_computes_the_model(make, tmp_path):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(16, 8, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
    problem = Problem.from_task(_task(model))
    names = problem.analysis.names
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert any(n.endswith(f"attn.{proj}") for n in names), names
    # every parameter of the user's model is in a quantized layer or priced as kept float: none is left out
    assert problem.analysis.float_bytes == 4 * sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(model(x), before)  # the user's model is untouched
        assert torch.allclose(problem.task.model(x), before, atol=1e-5)
    ev = Evaluator(problem, EvalConfig())
    policy = problem.space.resolve(problem.space.uniform(4, 8))
    qmodel = ev.engine.apply(policy)
    export_policy(qmodel, problem.analysis, policy, tmp_path / "m.ampq", sample_input=x[:4], float_model=ev.float_model,
                  repeats=1)
    with torch.no_grad():
        expected = qmodel(x)
        assert torch.allclose(load_exported(tmp_path / "m.ampq")(x), expected, atol=1e-4)
    got = ort.predict(ampq_to_onnx(tmp_path / "m.ampq").SerializeToString(), x.numpy())
    assert np.abs(got - expected.numpy()).max() < 1e-3 * max(1.0, float(expected.abs().max()))


def test_a_model_with_nothing_to_rewrite_is_returned_as_it_is(tiny_resnet):
    assert canonical_model(tiny_resnet, torch.zeros(1, 1, 28, 28)) is tiny_resnet


def test_forward_arguments_with_defaults_are_traced_at_their_defaults():
    """A mask argument left at None is not a second input (the analysis refused such models)."""
    torch.manual_seed(0)
    analysis = analyse(canonical_model(AttentionPool().eval(), torch.zeros(1, 8, 6)), torch.zeros(1, 8, 6))
    assert analysis.input_shape == (8, 6)


@fx.wrap
def _train_only_noise(x: torch.Tensor, training: bool) -> torch.Tensor:
    return x + torch.randn_like(x) if training else x


class TrainNoise(nn.Module):
    """A user's regulariser: noise in training, the identity in eval mode (through an fx leaf function)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _train_only_noise(x, self.training)


class NoisyNet(nn.Module):
    def __init__(self, noise: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.noise = noise
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.noise(torch.relu(self.conv1(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def test_a_registered_eval_identity_module_passes_analysis_and_export(tmp_path):
    torch.manual_seed(0)
    model = NoisyNet(TrainNoise()).eval()
    x = torch.zeros(1, 1, 12, 12)
    blocked = analyse(model, x)
    assert not blocked.groups[blocked.layer("conv1").out_group].prunable  # an unknown function touches it
    register_eval_identity(TrainNoise)
    canonical = canonical_model(model, x)
    assert isinstance(canonical.noise, nn.Identity) and isinstance(model.noise, TrainNoise)
    analysis = analyse(canonical, x)
    assert analysis.groups[analysis.layer("conv1").out_group].prunable
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(32, 1, 12, 12, generator=gen)
    loader = DataLoader(TensorDataset(data, torch.randint(0, 5, (32,), generator=gen)), batch_size=16)
    problem = Problem.from_task(Task(model, x, loader, loader, loader, loader))
    ev = Evaluator(problem, EvalConfig())
    policy = problem.space.resolve(problem.space.uniform(4, 8, sparsity=0.25))
    qmodel = ev.engine.apply(policy)
    export_policy(qmodel, problem.analysis, policy, tmp_path / "m.ampq", sample_input=data[:4],
                  float_model=ev.float_model, repeats=1)
    with torch.no_grad():
        assert torch.allclose(load_exported(tmp_path / "m.ampq")(data), qmodel(data), atol=1e-4)


class Halve(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5


def test_registering_a_module_that_is_not_the_identity_is_caught():
    register_eval_identity(Halve)
    with pytest.raises(AnalysisError, match="computes something else.*noise"):
        canonical_model(NoisyNet(Halve()).eval(), torch.randn(2, 1, 12, 12))
    with pytest.raises(AnalysisError, match="expects a torch.nn.Module subclass"):
        register_eval_identity(Halve())  # type: ignore[arg-type]
