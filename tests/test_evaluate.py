"""The evaluator: fidelity levels, determinism, any user model and metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from automl.errors import DataError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.finetune import FinetuneConfig
from automl.evaluation.task import Task
from search_spaces import LayerPolicy, Policy, SpaceConfig

from .conftest import make_loaders


@pytest.fixture
def evaluator(tiny_task) -> Evaluator:
    return Evaluator(Problem.from_task(tiny_task), EvalConfig(fidelity=1, bn_samples=0, early_stop=False, qat_steps=3))


def test_float_policy_reproduces_the_float_model(tiny_task):
    problem = Problem.from_task(tiny_task, SpaceConfig(act_bits=(8, 32), pin_first_last=False))
    ev = Evaluator(problem, EvalConfig(fidelity=1, bn_samples=0, early_stop=False))
    policy = Policy(tuple((s.name, LayerPolicy(32, (32,) * s.out_channels)) for s in problem.space.layers))
    m = ev.evaluate(policy)
    assert m.kl < 1e-6 and m.accuracy == pytest.approx(ev.baseline().accuracy)


@pytest.mark.parametrize("fidelity", [1, 2, 3])
def test_evaluation_is_deterministic(evaluator, fidelity):
    policy = evaluator.problem.space.sample(np.random.default_rng(3))
    a = evaluator.evaluate(policy, fidelity)
    b = evaluator.evaluate(policy, fidelity)
    assert (a.accuracy, a.loss, a.kl) == (b.accuracy, b.loss, b.kl)
    assert a.fidelity == fidelity


def test_lower_bits_move_further_from_the_float_model(evaluator):
    space = evaluator.problem.space
    kl8 = evaluator.evaluate(space.uniform(8)).kl
    kl2 = evaluator.evaluate(space.uniform(2)).kl
    assert kl2 > kl8


def test_batchnorm_reestimation_brings_pruned_statistics_back(evaluator):
    space = evaluator.problem.space
    policy = space.uniform(8, sparsity=0.5)
    engine = evaluator.engine
    engine.apply(policy)
    engine.reestimate_batchnorm(evaluator._bn_batch)
    stats = {}
    name = "layer2.0.conv1"
    h = engine.layers[name].register_forward_hook(lambda m, a, o: stats.setdefault("o", o))
    with torch.no_grad():
        engine.qmodel(evaluator._bn_batch)
    h.remove()
    out = stats["o"]
    live = engine.layers[name].bits > 0
    gamma, beta = engine.bn_affine[name]
    mean = out.mean(dim=(0, 2, 3))
    assert torch.allclose(mean[live], beta[live], atol=1e-4)
    assert torch.equal(out[:, ~live], torch.zeros_like(out[:, ~live]))


def test_qat_keeps_pruned_channels_at_zero(evaluator):
    space = evaluator.problem.space
    model = evaluator.engine.apply(space.uniform(4, sparsity=0.5))
    student = evaluator.finetune(model, 3)
    layer = student.get_submodule("layer2.0.conv1")
    from automl.quant.fake import quantize_weight_ste

    w = quantize_weight_ste(layer.w_param, layer.bits, layer._scale)
    assert torch.equal(w[layer.bits == 0], torch.zeros_like(w[layer.bits == 0]))


def test_any_model_and_metric_work(plain_cnn):
    loaders = make_loaders()
    calls = []

    def neg_loss(out, y):
        calls.append(1)
        return -float(torch.nn.functional.cross_entropy(out, y))

    task = Task(plain_cnn, torch.zeros(1, 1, 28, 28), loaders["train"], loaders["calib"], loaders["val"], loaders["test"], neg_loss)
    ev = Evaluator(Problem.from_task(task), EvalConfig(fidelity=1, bn_samples=0, early_stop=False))
    m = ev.evaluate(ev.problem.space.uniform(6))
    assert calls and m.accuracy == pytest.approx(-m.loss, rel=1e-5)


def test_a_loader_with_no_batches_is_a_clear_error(tiny_task):
    tiny_task.calib_loader = DataLoader(TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0)), batch_size=4)
    with pytest.raises(DataError, match="calib_loader yielded no batches"):
        Evaluator(Problem.from_task(tiny_task), EvalConfig(fidelity=1, bn_samples=0, early_stop=False))


def test_final_fine_tune_scores_on_test_and_leaves_the_engine_model(evaluator):
    policy = evaluator.problem.space.uniform(3, 4)
    engine_model = evaluator.engine.apply(policy)
    before = {k: v.clone() for k, v in engine_model.state_dict().items()}
    # an untrained test model scores like float: without stop_at_float it still trains
    metrics, trained = evaluator.final(policy, 3, "test", finetune=FinetuneConfig(steps=3, stop_at_float=False))
    assert metrics.fidelity == 3 and trained is not engine_model
    for k, v in evaluator.engine.qmodel.state_dict().items():
        assert torch.equal(v, before[k]), k
