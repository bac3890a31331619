"""What a user brings to a search: a trained model, its data and a metric."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from automl.errors import DataError, TaskError
from automl.evaluation.losses import Loss, check_losses
from automl.quant.device import model_device

Metric = Callable[[torch.Tensor, torch.Tensor], float]
LOADER_NAMES = ("train_loader", "calib_loader", "val_loader", "test_loader")


def top1_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose highest-scoring class is the target class.

    Args:
        outputs: scores (logits or probabilities) of shape (N, C).
        targets: integer class labels of shape (N,).

    Returns:
        A float in [0, 1].

    Raises:
        TaskError: if the shapes do not fit together or the batch is empty.
    """
    if outputs.dim() != 2 or targets.dim() != 1 or outputs.shape[0] != targets.shape[0]:
        raise TaskError(
            "top1_accuracy expects outputs of shape (N, C) and integer targets of shape (N,), "
            f"got outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)}; "
            "pass class scores and class indices, or give the Task a metric that fits your outputs."
        )
    if targets.shape[0] == 0:
        raise TaskError("top1_accuracy got an empty batch (N = 0); expected at least one sample.")
    return float((outputs.argmax(dim=1) == targets).float().mean().item())


@dataclass
class Task:
    """A trained model with its data loaders and quality metric.

    The task contract:

    * ``model`` is an ``nn.Module`` that accepts ``sample_input`` and every loader's
      input batches. It is not copied; searchers copy it before they change it. It may lie
      on any one device, and the loaders may yield CPU batches: the contract is checked on
      the model's device, and a search moves model and batches to the device it runs on.
    * ``sample_input`` is one batched input (first dimension = batch), used to trace
      the model and to count its operations. Loader batches must have the same shape
      apart from the batch dimension.
    * Each loader is re-iterable (a ``DataLoader`` is) and yields ``(inputs, targets)``
      tuples or lists of two tensors with the same batch size. ``train_loader`` feeds
      fine-tuning, ``calib_loader`` quantizer calibration and BatchNorm re-estimation
      (``None``: calibration inputs are synthesised from the model's BatchNorm statistics,
      see :mod:`automl.evaluation.datafree`),
      ``val_loader`` the scores a searcher sees, and ``test_loader`` the final report only.
    * ``metric(outputs, targets)`` returns a Python float for one batch, higher being
      better (e.g. :func:`top1_accuracy`).
    * ``loss(outputs, targets)`` and ``distill_loss(student_outputs, teacher_outputs)``
      return scalar tensors: the task's training loss and the distance of a compressed
      network's outputs from the float network's, used by scoring, sensitivities and the
      fine-tune. ``None`` (the default) means classification: cross-entropy and softmax
      KL (:mod:`automl.evaluation.losses`); any other task (regression, segmentation, ...) gives both.

    Construction checks the contract cheaply: one forward pass on ``sample_input``, one
    batch peeked from every loader, and the metric on one validation batch. Forward
    passes run in eval mode without gradients and restore the model's train/eval mode,
    so BatchNorm statistics are left as they were. Both losses are tried on the same batch. Peeking starts an iteration of each
    loader, so a shuffling loader draws from its random generator once.

    Attributes:
        model: the trained network.
        sample_input: one batched input tensor.
        train_loader: training batches.
        calib_loader: calibration batches, or ``None`` to calibrate data-free.
        val_loader: validation batches, scored during the search.
        test_loader: test batches, for final reporting only.
        metric: quality of outputs against targets, higher is better.
        name: a label for logs and tracking.
        loss: training loss ``loss(outputs, targets) -> scalar tensor``; None = cross-entropy.
        distill_loss: ``distill_loss(student_outputs, teacher_outputs) -> scalar tensor``;
            None = KL divergence of the softmax distributions.
    """

    model: nn.Module
    sample_input: torch.Tensor
    train_loader: Iterable[Any]
    calib_loader: Iterable[Any] | None
    val_loader: Iterable[Any]
    test_loader: Iterable[Any]
    metric: Metric = top1_accuracy
    name: str = "task"
    loss: Loss | None = None
    distill_loss: Loss | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def loaders(self) -> dict[str, Iterable[Any]]:
        """The four loaders keyed ``train``, ``calib``, ``val`` and ``test``."""
        return {
            "train": self.train_loader,
            "calib": self.calib_loader,
            "val": self.val_loader,
            "test": self.test_loader,
        }

    def validate(self) -> None:
        """Check the task contract (see the class docstring).

        Raises:
            TaskError: if the model, sample input, metric or name is unusable.
            DataError: if a loader is not iterable, yields nothing, or yields batches
                that are not ``(inputs, targets)`` pairs of tensors.
        """
        if not isinstance(self.name, str) or not self.name:
            raise TaskError(f"Task.name must be a non-empty string, got {self.name!r}.")
        if not isinstance(self.model, nn.Module):
            raise TaskError(
                f"Task.model must be a torch.nn.Module, got {type(self.model).__name__}; "
                "pass the network itself (not a state_dict, class or checkpoint path)."
            )
        self._check_sample_input()
        if not callable(self.metric):
            raise TaskError(
                f"Task.metric must be callable as metric(outputs, targets) -> float, got "
                f"{type(self.metric).__name__}; pass e.g. automl.evaluation.task.top1_accuracy."
            )
        batches = {name: self._peek(name) for name in LOADER_NAMES if not (name == "calib_loader" and self.calib_loader is None)}
        self._check_metric(*batches["val_loader"])

    def _check_sample_input(self) -> None:
        sample = self.sample_input
        if not isinstance(sample, torch.Tensor) or sample.dim() < 1 or sample.shape[0] < 1:
            got = f"shape {tuple(sample.shape)}" if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise TaskError(
                f"Task.sample_input must be a batched tensor (batch first, at least one sample), got {got}; "
                "pass e.g. next(iter(val_loader))[0][:1]."
            )
        try:
            self._forward(sample)
        except Exception as exc:
            raise TaskError(
                f"the model failed on sample_input of shape {tuple(sample.shape)} and dtype {sample.dtype}: "
                f"{type(exc).__name__}: {exc}. Pass a sample_input the model accepts (same shape as one "
                "input batch of the loaders)."
            ) from exc

    def _peek(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        loader = getattr(self, name)
        try:
            iterator = iter(loader)
        except TypeError as exc:
            raise DataError(
                f"{name} must be an iterable of (inputs, targets) batches such as a DataLoader, got "
                f"{type(loader).__name__} ({exc})."
            ) from exc
        try:
            batch = next(iterator)
        except StopIteration:
            raise DataError(
                f"{name} yielded no batches: expected at least one (inputs, targets) batch from "
                f"{type(loader).__name__}; check that its dataset is not empty and that drop_last does not "
                "drop the only batch."
            ) from None
        except Exception as exc:
            raise DataError(f"{name} failed while yielding its first batch: {type(exc).__name__}: {exc}") from exc
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            got = type(batch).__name__
            if isinstance(batch, (tuple, list)):
                got = f"a {got} of length {len(batch)}"
            raise DataError(
                f"{name} must yield (inputs, targets) pairs, got {got}; wrap the dataset so each item is "
                "(input, target), e.g. TensorDataset(inputs, targets)."
            )
        inputs, targets = batch
        if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise DataError(
                f"{name} must yield (inputs, targets) as two tensors, got ({type(inputs).__name__}, "
                f"{type(targets).__name__}); use a DataLoader whose dataset returns tensors."
            )
        if inputs.dim() < 1 or targets.dim() < 1 or inputs.shape[0] != targets.shape[0]:
            raise DataError(
                f"{name} yielded inputs of shape {tuple(inputs.shape)} and targets of shape "
                f"{tuple(targets.shape)}; expected both batched with the same first (batch) dimension."
            )
        if inputs.shape[1:] != self.sample_input.shape[1:]:
            raise DataError(
                f"{name} yielded inputs of shape {tuple(inputs.shape)} but sample_input has shape "
                f"{tuple(self.sample_input.shape)}; expected equal shapes apart from the batch dimension, "
                "because operation counts are taken from sample_input. Pass a sample_input cut from a batch."
            )
        return inputs, targets

    def _check_metric(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        targets = targets.to(self._device())  # where the search will compare them with the outputs
        try:
            outputs = self._forward(inputs)
        except Exception as exc:
            raise TaskError(
                f"the model failed on a val_loader batch of shape {tuple(inputs.shape)}: {type(exc).__name__}: {exc}."
            ) from exc
        try:
            value = self.metric(outputs, targets)
        except Exception as exc:
            raise TaskError(
                f"metric failed on one val_loader batch (outputs {tuple(outputs.shape)}, targets "
                f"{tuple(targets.shape)}): {type(exc).__name__}: {exc}."
            ) from exc
        if isinstance(value, torch.Tensor) or isinstance(value, bool) or not isinstance(value, numbers.Real):
            hint = "; call .item() on the result" if isinstance(value, torch.Tensor) else ""
            raise TaskError(f"metric must return a Python float, got {type(value).__name__} ({value!r}){hint}.")
        if math.isnan(value):
            raise TaskError("metric returned NaN on one val_loader batch; expected a number, higher being better.")
        check_losses(self, outputs, targets)

    def _device(self) -> torch.device:
        """The model's device: the contract is checked where the model is (a GPU model with CPU loaders
        is a valid task; the search moves the batches)."""
        return model_device(self.model)

    def _forward(self, inputs: torch.Tensor) -> Any:
        inputs = inputs.to(self._device())
        # Restore each submodule's own mode: a user may keep e.g. frozen BatchNorm layers in eval mode.
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            with torch.no_grad():
                return self.model(inputs)
        finally:
            for module, training in modes:
                module.training = training
