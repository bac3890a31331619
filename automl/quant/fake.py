"""Fake quantization primitives, vectorised over per-channel bit-widths.

Weights are symmetric and signed with one scale per output channel; a channel's integer
grid is ``[-(2^(b-1)-1), 2^(b-1)-1]`` (at most ``2^b - 1`` values), 0 bits gives exact
zeros and 32 bits keeps the float value. Activations use one scale per layer, unsigned
when the calibrated range is non-negative.
"""

from __future__ import annotations

import numpy as np
import torch

FLOAT_BITS = 32
CLIP_RATIOS = torch.linspace(0.35, 1.0, 27)


def _pow2(scale: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.ceil(torch.log2(scale.clamp_min(1e-30))))


def weight_qmax(bits: torch.Tensor) -> torch.Tensor:
    """Largest integer level per channel (0 for pruned channels)."""
    b = bits.to(torch.float32)
    return torch.where(b > 0, torch.exp2(b - 1) - 1, torch.zeros_like(b))


def weight_scales(
    w: torch.Tensor, bits: torch.Tensor, method: str = "mse", power_of_two: bool = False
) -> torch.Tensor:
    """Per-output-channel scales for ``w`` at per-channel ``bits`` (vectorised).

    ``method`` is ``"max"`` (scale from the absolute maximum) or ``"mse"`` (the clipping
    ratio that minimises each channel's squared error, searched on a fixed grid).
    """
    flat = w.detach().reshape(w.shape[0], -1)
    absmax = flat.abs().amax(dim=1).clamp_min(1e-12)
    qmax = weight_qmax(bits).clamp_min(1.0)
    if method == "max":
        scale = absmax / qmax
        return _pow2(scale) if power_of_two else scale
    if method != "mse":
        raise ValueError(f"weight clipping method must be 'max' or 'mse', got {method!r}")
    ratios = CLIP_RATIOS.to(device=flat.device, dtype=flat.dtype)[:, None]  # [R, 1]
    scales = ratios * absmax[None, :] / qmax[None, :]  # [R, C]
    if power_of_two:
        scales = _pow2(scales)
    q = torch.clamp(torch.round(flat[None] / scales[..., None]), -qmax[None, :, None], qmax[None, :, None])
    err = ((q * scales[..., None] - flat[None]) ** 2).sum(dim=2)  # [R, C]
    best = err.argmin(dim=0)
    return scales.gather(0, best[None]).squeeze(0)


def quantize_weight(
    w: torch.Tensor, bits: torch.Tensor, method: str = "mse", power_of_two: bool = False
) -> torch.Tensor:
    """Fake-quantize ``w`` with one bit-width per output channel (no gradient)."""
    bits = bits.to(w.device)
    shape = (-1,) + (1,) * (w.dim() - 1)
    scale = weight_scales(w, bits, method, power_of_two).view(shape)
    qmax = weight_qmax(bits).view(shape)
    q = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
    keep_float = (bits >= FLOAT_BITS).view(shape)
    return torch.where(keep_float, w, q)


class _STEWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, scale, qmax, keep_float, live):  # type: ignore[override]
        q = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
        return torch.where(keep_float, w, q) * live

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None, None, None, None


def quantize_weight_ste(w: torch.Tensor, bits: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Fake quantization with a straight-through gradient, for quantization-aware training.

    ``scale`` is the per-channel scale (shape ``[C]``); pruned channels stay exactly zero
    and receive no update through the mask.
    """
    shape = (-1,) + (1,) * (w.dim() - 1)
    qmax = weight_qmax(bits).view(shape)
    live = (bits > 0).to(w.dtype).view(shape)
    return _STEWeight.apply(w, scale.view(shape).clamp_min(1e-12), qmax, (bits >= FLOAT_BITS).view(shape), live) * live


class _STEAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, inv_scale, qmin, qmax):  # type: ignore[override]
        q = x.mul(inv_scale).round_()
        inside = (q >= qmin).logical_and_(q <= qmax)
        ctx.save_for_backward(inside)
        return q.clamp_(qmin, qmax).mul_(scale)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def quantize_act_ste(x: torch.Tensor, scale: float, qmin: int, qmax: int) -> torch.Tensor:
    """Per-tensor fake quantization of an activation with a straight-through gradient (zero outside the grid).

    The same values and gradients, bit for bit, as ``torch.fake_quantize_per_tensor_affine(x,
    scale, 0, qmin, qmax)`` (both round ``x * (1 / scale)`` in float32, ties to even), in a
    quarter of its time on CPU: the fused op took as long as the layer's convolution in a
    fine-tune step (``tests/test_quant.py``).
    """
    s32 = np.float32(scale)  # the float32 rounding of the scale and of its inverse, computed on the host
    return _STEAct.apply(x, float(s32), float(np.float32(1.0) / s32), qmin, qmax)


def act_qparams(
    sample: torch.Tensor, bits: int, signed: bool, method: str = "mse", power_of_two: bool = False
) -> tuple[float, int, int]:
    """Scale and integer range for activations at ``bits`` from a calibration sample.

    Methods: ``"minmax"`` (absolute maximum), ``"percentile"`` (99.99th percentile of
    absolute values), ``"mse"`` (clipping ratio with the least squared error).
    Returns ``(scale, qmin, qmax)``; the zero point is 0 (symmetric or unsigned grids).
    """
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    qmin = -levels if signed else 0
    x = sample.detach().flatten().float()
    absmax = float(x.abs().max().clamp_min(1e-8))
    if method == "minmax":
        clip = absmax
    elif method == "percentile":
        k = max(1, int(round(0.9999 * x.numel())))
        clip = float(x.abs().kthvalue(k).values.clamp_min(1e-8))
    elif method == "mse":
        ratios = CLIP_RATIOS.to(x.device)[:, None]
        scales = ratios * absmax / levels
        if power_of_two:
            scales = _pow2(scales)
        q = torch.clamp(torch.round(x[None] / scales), qmin, levels) * scales
        err = ((q - x[None]) ** 2).mean(dim=1)
        return float(scales[err.argmin()]), qmin, levels
    else:
        raise ValueError(f"activation calibration must be 'minmax', 'percentile' or 'mse', got {method!r}")
    scale = clip / levels
    if power_of_two:
        scale = float(_pow2(torch.tensor(scale, device=x.device)))
    return scale, qmin, levels


def _scale_grad(scale: torch.Tensor, factor: float) -> torch.Tensor:
    """``scale`` in the forward pass, its gradient multiplied by ``factor`` in the backward."""
    return (scale - scale * factor).detach() + scale * factor


def lsq_quantize(
    x: torch.Tensor, scale: torch.Tensor, qmin: torch.Tensor | float, qmax: torch.Tensor | float, grad_factor: float
) -> torch.Tensor:
    """Fake quantization with a learnable step size (LSQ, Esser et al. 2020).

    ``round(clamp(x / s, qmin, qmax)) * s`` with a straight-through gradient for the
    rounding, so ``s`` receives the LSQ gradient, scaled by ``grad_factor`` (the paper's
    ``1 / sqrt(n * qmax)``). ``scale``, ``qmin`` and ``qmax`` broadcast against ``x``, so
    channels with different bit-widths share one call (torch's learnable fake-quantize ops
    take one integer range per tensor, which mixed per-channel bit-widths do not have).
    """
    s = _scale_grad(scale, grad_factor)
    v = torch.clamp(x / s, qmin, qmax)
    return ((v.round() - v).detach() + v) * s
