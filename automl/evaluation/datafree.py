"""Calibration inputs: the task's calibration batches, or images synthesised from BatchNorm statistics.

Data-free calibration (ZeroQ, Cai et al. 2020; "The Knowledge Within", Haroush et al. 2020)
needs no data at all: starting from Gaussian noise, a batch of inputs is optimised so that
the batch statistics at the input of every BatchNorm of the float network (per-channel mean
and standard deviation) match that BatchNorm's running statistics, which summarise what the
network saw in training. These "distilled" inputs then calibrate activation ranges, drive
BatchNorm re-estimation and AdaQuant, and so every sensitivity and evaluation, in place of
real calibration images.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from automl.errors import ConfigError, DataError
from automl.evaluation.task import Task
from automl.quant.device import device_generator, model_device, to_device


@dataclass(frozen=True)
class DataFreeConfig:
    """How synthetic calibration inputs are distilled.

    Attributes:
        samples: how many inputs to synthesise.
        batch: inputs per optimised batch (BatchNorm statistics are matched per batch).
        steps: Adam steps per batch.
        lr: Adam learning rate on the input pixels.
        seed: seeds the initial noise.
    """

    samples: int = 128
    batch: int = 64
    steps: int = 100
    lr: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.samples, self.batch, self.steps) < 1 or not self.lr > 0:
            raise ConfigError(
                f"data-free calibration needs samples, batch, steps >= 1 and lr > 0, got {self.to_dict()}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataFreeConfig:
        return cls(**data)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that track running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


def _batch_stats(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """Per BatchNorm: (module, per-channel mean, per-channel std) of its input on ``x``."""
    out: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        inp = args[0]
        dims = [d for d in range(inp.dim()) if d != 1]
        out.append((mod, inp.mean(dim=dims), inp.var(dim=dims, unbiased=False).add(1e-8).sqrt()))

    handles = [bn.register_forward_pre_hook(hook) for bn in batchnorms(model)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def bn_mismatch(model: nn.Module, x: torch.Tensor) -> float:
    """Worst layer-average mismatch between the batch statistics of ``x`` and the running ones.

    Per BatchNorm: mean over channels of ``|mean - running_mean| / running_std`` and of
    ``|std / running_std - 1|``; the larger of the two, maximised over layers. 0 is a
    perfect match; Gaussian noise on a trained network typically gives well above 0.5.
    """
    model = model.eval()
    worst = 0.0
    with torch.no_grad():
        for bn, mean, std in _batch_stats(model, x):
            rstd = bn.running_var.add(bn.eps).sqrt()  # type: ignore[union-attr]
            err_mean = float(((mean - bn.running_mean) / rstd).abs().mean())
            err_std = float((std / rstd - 1).abs().mean())
            worst = max(worst, err_mean, err_std)
    return worst


def _distil_batch(model: nn.Module, shape: tuple[int, ...], cfg: DataFreeConfig, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=gen, device=gen.device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    for _ in range(cfg.steps):
        loss = x.new_zeros(())
        for bn, mean, std in _batch_stats(model, x):
            rstd = bn.running_var.add(bn.eps).sqrt()  # type: ignore[union-attr]
            # Normalised by the running std so every layer weighs alike, whatever its scale.
            loss = loss + (((mean - bn.running_mean) / rstd) ** 2).mean() + ((std / rstd - 1) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x.detach()


def synthesize(model: nn.Module, sample_input: torch.Tensor, config: DataFreeConfig | None = None) -> list[torch.Tensor]:
    """Distil calibration inputs from ``model``'s BatchNorm statistics (see the module docstring).

    Args:
        model: the trained float network (its parameters are not changed or trained).
        sample_input: one input, giving the shape of the synthetic ones.
        config: how many inputs and how long to optimise.

    Returns:
        Batches of synthetic inputs, on the model's device (where they are synthesised).

    Raises:
        ConfigError: if ``model`` has no BatchNorm with running statistics to match.
    """
    cfg = config or DataFreeConfig()
    if not batchnorms(model):
        raise ConfigError(
            f"data-free calibration matches BatchNorm running statistics, but {type(model).__name__} has no "
            "BatchNorm layer with running statistics. Give the task a calib_loader and use --calibration data."
        )
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    gen = device_generator(model_device(model), cfg.seed)
    try:
        out = []
        for start in range(0, cfg.samples, cfg.batch):
            n = min(cfg.batch, cfg.samples - start)
            out.append(_distil_batch(model, (n, *sample_input.shape[1:]), cfg, gen))
        return out
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)


def calibration_inputs(
    task: Task, calibration: str, n_batches: int, seed: int = 0, config: DataFreeConfig | None = None,
    device: torch.device | None = None,
) -> list[torch.Tensor]:
    """The inputs that calibrate a task: ``n_batches`` of its calibration loader, or synthetic ones.

    ``calibration`` is ``"data"`` or ``"data-free"`` (synthesised with ``config``); a task
    whose ``calib_loader`` is ``None`` is calibrated data-free whatever ``calibration`` says.
    The inputs lie on ``device`` (default: the model's device), where synthetic ones are made.

    Raises:
        ConfigError: data-free calibration of a model without BatchNorm.
        DataError: the calibration loader yields nothing or not ``(inputs, targets)`` pairs.
    """
    device = model_device(task.model) if device is None else device
    if calibration == "data-free" or task.calib_loader is None:
        return [to_device(x, device, "a synthetic calibration batch")
                for x in synthesize(task.model, task.sample_input, config or DataFreeConfig(seed=seed))]
    if calibration != "data":
        raise ConfigError(f"calibration must be 'data' or 'data-free', got {calibration!r}")
    out = []
    for i, batch in enumerate(task.calib_loader):
        if i >= n_batches:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"calib_loader must yield (inputs, targets) pairs, got {type(batch).__name__}")
        out.append(to_device(batch[0], device, "calib_loader"))
    if not out:
        raise DataError("calib_loader yielded no batches; give it at least one (inputs, targets) batch")
    return out
