"""Position-based scaled gradient (PSG; Kim et al., NeurIPS 2020) for quantization-aware fine-tuning.

PSG scales each weight's update by its distance to the nearest point of its quantization
grid: a weight sitting on a grid point barely moves, one half-way between two points moves
at full speed. Under the noisy gradients of fine-tuning, weights therefore drift slowly
near grid points and quickly away from the middles, and settle on the grid; the latent
float weights of QAT then round to the same codes step after step instead of flipping.

With ``strength`` λ in [0, 1] and ``d`` = distance to the nearest grid point in units of the
channel's step (0 .. 0.5), the update is multiplied by ``s = max(ε, 1 - λ + 2λd)``: λ = 0
is the plain optimiser, λ = 1 is pure PSG. Float (32-bit) and pruned channels keep ``s = 1``.

The scaling is applied to the optimiser's *update*, not to the gradient: Adam divides each
gradient by a running estimate of its own magnitude, which would undo a per-weight gradient
scale almost completely. Wrapping the step works with any ``torch.optim`` optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from automl.quant.engine import QuantLayer
from automl.quant.fake import FLOAT_BITS, weight_qmax

PSG_FLOOR = 1e-2


def grid_distance(ql: QuantLayer, w: torch.Tensor) -> torch.Tensor:
    """Per-weight distance of ``w`` to the nearest grid point of ``ql``, in grid steps.

    Clipped weights count their distance to the outermost level; float and pruned channels
    give 0 (they have no grid to be off).
    """
    shape = (-1,) + (1,) * (w.dim() - 1)
    scale = ql._scale.clamp_min(1e-12).view(shape)
    qmax = weight_qmax(ql.bits).view(shape)
    code = w / scale
    dist = (code - torch.clamp(torch.round(code), -qmax, qmax)).abs()
    quantized = ((ql.bits > 0) & (ql.bits < FLOAT_BITS)).view(shape)
    return torch.where(quantized, dist, torch.zeros_like(dist))


def psg_scale(ql: QuantLayer, w: torch.Tensor, strength: float) -> torch.Tensor:
    """The per-weight update multiplier ``max(ε, 1 - λ + 2λd)`` (1 for float and pruned channels)."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    d = grid_distance(ql, w).clamp_max(0.5)
    s = (1.0 - strength + 2.0 * strength * d).clamp_min(PSG_FLOOR)
    quantized = ((ql.bits > 0) & (ql.bits < FLOAT_BITS)).view(shape)
    return torch.where(quantized, s, torch.ones_like(s))


class PSGOptimizer:
    """An optimiser whose steps on QAT weights are rescaled by :func:`psg_scale`.

    Args:
        optimizer: the wrapped optimiser (its other parameters, e.g. biases, are untouched).
        layers: the quantized layers in QAT mode whose ``w_param`` PSG rescales.
        strength: λ in [0, 1].
    """

    def __init__(self, optimizer: torch.optim.Optimizer, layers: Iterable[QuantLayer], strength: float) -> None:
        self.optimizer = optimizer
        self.layers = [ql for ql in layers if ql.qat]
        self.strength = float(strength)

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        with torch.no_grad():
            before = [(ql, ql.w_param.detach().clone()) for ql in self.layers]
        self.optimizer.step()
        with torch.no_grad():
            for ql, w0 in before:
                ql.w_param.copy_(w0 + psg_scale(ql, w0, self.strength) * (ql.w_param - w0))


def with_psg(optimizer: torch.optim.Optimizer, model: nn.Module, strength: float) -> torch.optim.Optimizer | PSGOptimizer:
    """``optimizer`` wrapped in PSG for every QAT layer of ``model``; unchanged when ``strength`` is 0."""
    if strength <= 0:
        return optimizer
    return PSGOptimizer(optimizer, (m for m in model.modules() if isinstance(m, QuantLayer)), strength)
