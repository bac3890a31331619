"""Incremental evaluation: a reused prefix gives exactly the metrics of a full evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.incremental import ActivationCache
from automl.evaluation.task import Task
from search_spaces import Policy

from .conftest import make_loaders, randomise_batchnorm


def _task(model: nn.Module) -> Task:
    loaders = make_loaders(n=96, batch=32)
    return Task(model, torch.zeros(2, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"])


class InplaceResidual(nn.Module):
    """A residual net with in-place ReLUs: stored activations must not be overwritten."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        y = F.relu(self.a(x), inplace=True)
        y = self.b(y)
        y += x
        return self.fc(F.adaptive_avg_pool2d(self.relu(y), 1).flatten(1))


def _mutations(space, rng, n: int) -> list[Policy]:
    """Random policies, each followed by copies differing from it in one layer (every layer once)."""
    out = []
    for _ in range(n):
        base = space.sample(rng)
        other = space.sample(rng)
        out.append(base)
        names = space.names
        for j in rng.permutation(len(names)):
            layers = list(base)
            layers[j] = (names[j], other.as_dict()[names[j]])
            out.append(Policy(tuple(layers)))
    return out


@pytest.mark.parametrize("fidelity", [1, 2])
@pytest.mark.parametrize("which", ["resnet", "plaincnn", "inplace"])
def test_incremental_metrics_are_bit_for_bit_those_of_a_full_evaluation(which, fidelity, tiny_resnet, plain_cnn):
    model = {"resnet": tiny_resnet, "plaincnn": plain_cnn, "inplace": randomise_batchnorm(InplaceResidual())}[which]
    problem = Problem.from_task(_task(model))
    full = Evaluator(problem, EvalConfig(bn_samples=0, early_stop=False, fidelity=fidelity, incremental=False))
    inc = Evaluator(problem, EvalConfig(bn_samples=0, early_stop=False, fidelity=fidelity, incremental=True))
    assert inc.incremental is not None, inc.incremental_error
    if which == "inplace":
        assert inc.incremental.staged.inplace
    policies = _mutations(problem.space, np.random.default_rng(0), 2)
    for policy in policies:
        a, b = full.evaluate(policy), inc.evaluate(policy)
        assert (a.accuracy, a.loss, a.kl, a.samples) == (b.accuracy, b.loss, b.kl, b.samples)
    stats = inc.incremental.stats
    assert stats.hits > 0 and stats.layers_run < stats.layers_total  # prefixes really were reused


def test_a_change_in_the_last_layer_runs_only_that_layer(tiny_task, rng):
    problem = Problem.from_task(tiny_task)
    ev = Evaluator(problem, EvalConfig(bn_samples=0, early_stop=False, fidelity=1))
    staged = ev.incremental.staged
    base = problem.space.sample(rng)
    last = staged.layer_order[-1]
    j = problem.space.names.index(last)
    layers = list(base)
    layers[j] = (last, problem.space.sample(np.random.default_rng(5)).as_dict()[last])
    ev.evaluate(base)
    ev.evaluate(base.__class__(tuple(layers[:j] + [(last, problem.space.uniform(8).as_dict()[last])] + layers[j + 1:])))
    before = ev.incremental.layers_run
    ev.evaluate(Policy(tuple(layers)))
    batches = len(ev._split("val")[0])
    assert ev.incremental.layers_run - before == batches  # one layer per batch


def test_a_prefix_is_stored_from_its_second_sight():
    cache = ActivationCache(limit_bytes=4000)
    assert not cache.admit(("k",)) and cache.admit(("k",))


def test_the_activation_cache_stays_under_its_limit():
    cache = ActivationCache(limit_bytes=4000)
    for i in range(10):
        cache.put(("k", i), (torch.zeros(250),))  # 1000 bytes each
        assert cache.bytes <= 4000
    assert cache.get(("k", 0)) is None and cache.get(("k", 9)) is not None
    assert cache.evictions == 6
    cache.put(("big",), (torch.zeros(2000),))  # larger than the limit: not stored
    assert cache.get(("big",)) is None


def test_an_untraceable_model_falls_back_to_full_passes(tiny_task, rng, monkeypatch):
    import automl.evaluation.incremental as incremental

    def refuse(_engine):
        raise torch.fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow")

    monkeypatch.setattr(incremental, "StagedModel", refuse)
    problem = Problem.from_task(tiny_task)
    ev = Evaluator(problem, EvalConfig(fidelity=1, bn_samples=0, early_stop=False))
    assert ev.incremental is None and "TraceError" in ev.incremental_error
    policy = problem.space.sample(rng)
    a, b = ev.evaluate(policy), Evaluator(problem, EvalConfig(fidelity=1, bn_samples=0, early_stop=False, incremental=False)).evaluate(policy)
    assert (a.accuracy, a.loss, a.kl) == (b.accuracy, b.loss, b.kl)
