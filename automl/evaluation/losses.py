"""The two losses a task trains and scores with, and the classification defaults.

A :class:`automl.Task` may give ``loss(outputs, targets)`` (the task's own training loss,
reported as ``Metrics.loss``) and ``distill_loss(student_outputs, teacher_outputs)`` (how
far a compressed network's outputs are from the float network's, reported as
``Metrics.kl`` and minimised by the fine-tune). ``None`` means the classification defaults:
cross-entropy against integer labels and the KL divergence between the two softmax
distributions. Both return a scalar tensor so that the fine-tune can back-propagate it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from automl.errors import TaskError

Loss = Callable[[Any, Any], torch.Tensor]


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of class scores ``(N, C)`` against integer labels ``(N,)``."""
    return F.cross_entropy(outputs, targets)


def softmax_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the softmax distributions, averaged over the batch."""
    return F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1), log_target=True, reduction="batchmean")


def task_losses(task: object) -> tuple[Loss, Loss]:
    """``(loss, distill_loss)`` of ``task``, the classification defaults where it gives none."""
    loss = getattr(task, "loss", None)
    distill = getattr(task, "distill_loss", None)
    return (loss if loss is not None else cross_entropy), (distill if distill is not None else softmax_kl)


def _check_classification(outputs: Any, targets: torch.Tensor, which: str) -> None:
    fits = (
        isinstance(outputs, torch.Tensor) and outputs.dim() == 2 and outputs.shape[1] >= 2
        and targets.dim() == 1 and not targets.is_floating_point()
    )
    if not fits:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise TaskError(
            f"the Task gives no {which}, so the classification default applies (cross-entropy and softmax "
            f"KL over class scores of shape (N, C >= 2) with integer labels of shape (N,)), but the model "
            f"outputs {shape} and the targets are {tuple(targets.shape)} {targets.dtype}. For regression, "
            "segmentation or any other task pass Task(loss=..., distill_loss=...), e.g. "
            "loss=torch.nn.functional.mse_loss, distill_loss=torch.nn.functional.mse_loss."
        )


def _check_value(value: Any, which: str, args: str) -> None:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise TaskError(
            f"Task.{which}({args}) must return a scalar tensor (so the fine-tune can back-propagate it), "
            f"got {got}; reduce it with .mean()."
        )
    if not math.isfinite(float(value)):
        raise TaskError(f"Task.{which}({args}) returned {float(value)} on one val_loader batch; expected a finite number.")


def check_losses(task: object, outputs: Any, targets: torch.Tensor) -> None:
    """Check the task's losses (or the defaults) on one batch of model outputs.

    Raises:
        TaskError: if a loss is not callable, fails, returns no finite scalar tensor, or
            the defaults are used on outputs that are not class scores.
    """
    for which, args in (("loss", "outputs, targets"), ("distill_loss", "student_outputs, teacher_outputs")):
        fn = getattr(task, which, None)
        if fn is None:
            _check_classification(outputs, targets, which)
        elif not callable(fn):
            raise TaskError(f"Task.{which} must be callable as {which}({args}) -> scalar tensor or None, got {type(fn).__name__}.")
    loss, distill = task_losses(task)
    for which, args, fn, second in (
        ("loss", "outputs, targets", loss, targets), ("distill_loss", "student_outputs, teacher_outputs", distill, outputs),
    ):
        try:
            value = fn(outputs, second)
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(
                f"Task.{which}({args}) failed on one val_loader batch (outputs "
                f"{tuple(getattr(outputs, 'shape', ()))}, targets {tuple(targets.shape)}): {type(exc).__name__}: {exc}."
            ) from exc
        _check_value(value, which, args)
