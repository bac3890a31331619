"""Any task, not only classification: a task's own loss and distillation loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from automl.errors import TaskError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.losses import cross_entropy, softmax_kl, task_losses
from automl.evaluation.task import Task
from search_spaces.space import SpaceConfig


def _regression_loaders(n: int = 64, batch: int = 32) -> dict[str, DataLoader]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=gen)
    y = (x @ torch.randn(6, 1, generator=gen)).tanh()
    return {k: DataLoader(TensorDataset(x, y), batch_size=batch) for k in ("train", "calib", "val", "test")}


def _negative_mse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return -float(F.mse_loss(outputs, targets))


def _regression_task(**overrides) -> Task:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1)).eval()
    loaders = _regression_loaders()
    values = dict(metric=_negative_mse, loss=F.mse_loss, distill_loss=F.mse_loss, name="regression")
    values.update(overrides)
    return Task(model, torch.zeros(1, 6), loaders["train"], loaders["calib"], loaders["val"], loaders["test"], **values)


def test_classification_defaults_are_cross_entropy_and_softmax_kl(tiny_task):
    assert tiny_task.loss is None and tiny_task.distill_loss is None
    assert task_losses(tiny_task) == (cross_entropy, softmax_kl)
    logits = torch.randn(5, 3)
    assert float(softmax_kl(logits, logits)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("missing", ["loss", "distill_loss"])
def test_regression_outputs_without_losses_are_refused(missing):
    with pytest.raises(TaskError, match=f"gives no {missing}.*outputs \\(32, 1\\).*Task\\(loss=..., distill_loss=...\\)"):
        _regression_task(**{missing: None})


def test_a_loss_that_is_not_a_scalar_tensor_is_refused():
    with pytest.raises(TaskError, match=r"Task.loss\(outputs, targets\) must return a scalar tensor.*\(32, 1\).*\.mean\(\)"):
        _regression_task(loss=lambda o, t: (o - t) ** 2)
    with pytest.raises(TaskError, match="distill_loss.*must return a scalar tensor.*float"):
        _regression_task(distill_loss=lambda s, t: 0.5)


def test_a_loss_that_fails_or_is_not_callable_is_named():
    with pytest.raises(TaskError, match=r"Task.distill_loss\(student_outputs, teacher_outputs\) failed.*ZeroDivisionError"):
        _regression_task(distill_loss=lambda s, t: 1 / 0)
    with pytest.raises(TaskError, match="Task.loss must be callable.*str"):
        _regression_task(loss="mse")


def test_evaluator_scores_a_regression_task_with_its_own_losses():
    task = _regression_task()
    ev = Evaluator(Problem.from_task(task), EvalConfig(fidelity=1, bn_samples=0, early_stop=False, qat_steps=30, qat_lr=1e-2))
    xs = torch.cat([x for x, _ in task.val_loader])
    ys = torch.cat([y for _, y in task.val_loader])
    with torch.no_grad():
        float_out = task.model(xs)
    base = ev.baseline()
    assert base.loss == pytest.approx(float(F.mse_loss(float_out, ys)), rel=1e-5)
    assert base.accuracy == pytest.approx(_negative_mse(float_out, ys), rel=1e-5)
    assert base.kl == 0.0
    space = ev.problem.space
    low = ev.evaluate(space.uniform(2), fidelity=2)
    high = ev.evaluate(space.uniform(8), fidelity=2)
    assert low.kl > high.kl > 0  # the distillation loss is the MSE to the float outputs, not a softmax KL of one output
    tuned = ev.evaluate(space.uniform(2), fidelity=3)
    assert tuned.kl < low.kl  # the fine-tune minimises the task's distillation loss


def test_taylor_importance_of_a_regression_task_uses_its_loss():
    from automl.analysis import analyse
    from automl.quant.importance import channel_importance

    task = _regression_task()
    analysis = analyse(task.model, task.sample_input)
    xs, ys = zip(*task.calib_loader, strict=True)
    scores = channel_importance(task.model, analysis, "taylor", list(xs), loss=task.loss, calib_targets=list(ys))
    assert all(s.sum() > 0 for s in scores.values())
    # The classification default on one output has a zero gradient: every score would be 0.
    assert all(s.sum() == 0 for s in channel_importance(task.model, analysis, "taylor", list(xs)).values())
    problem = Problem.from_task(task, SpaceConfig(importance="taylor"))
    assert problem.space.names == analysis.names
