"""Channel importance: one criterion ranks channels for pruning and for bit groups (AJPQ)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from automl.errors import ConfigError
from automl.quant.device import model_device, to_device
from automl.quant.engine import fold_batchnorm
from search_spaces.network import ModelAnalysis

METHODS = ("l1", "l2", "taylor")


def channel_importance(
    model: nn.Module,
    analysis: ModelAnalysis,
    method: str = "l1",
    calib_batches: Iterable[torch.Tensor] | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    calib_targets: Iterable[torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Score every output channel of every quantizable layer (higher = more important).

    ``l1`` / ``l2`` are norms of the BatchNorm-folded weights (what the quantized network
    really multiplies with). ``taylor`` is the first-order Taylor/Fisher estimate of the
    loss change when the channel is removed, ``|sum(activation * gradient)|`` averaged over
    calibration batches, with the model's own predictions as labels (no labels needed);
    a task that is not classification passes its own ``loss`` and the ``calib_targets``.
    """
    if method not in METHODS:
        raise ConfigError(f"importance method must be one of {METHODS}, got {method!r}")
    folded, _ = fold_batchnorm(model, analysis)
    if method in ("l1", "l2"):
        p = 1 if method == "l1" else 2
        out = {}
        for layer in analysis.layers:
            w = folded.get_submodule(layer.name).weight.detach()
            out[layer.name] = w.reshape(w.shape[0], -1).norm(p=p, dim=1).cpu().numpy().astype(np.float64)
        return out
    batches = list(calib_batches or [])
    targets = list(calib_targets or [])
    if loss is not None and len(targets) != len(batches):
        raise ConfigError(f"taylor importance with a task loss needs one target batch per input batch, got "
                          f"{len(targets)} for {len(batches)}")
    if not batches:
        raise ConfigError("taylor importance needs calibration batches; pass calib_batches or use method='l1'")
    device = model_device(folded)
    batches = [to_device(x, device, "a calibration batch") for x in batches]
    targets = [to_device(y, device, "a calibration batch") for y in targets]
    scores = {layer.name: torch.zeros(layer.out_channels, dtype=torch.float64, device=device) for layer in analysis.layers}
    acts: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_m: nn.Module, _a: tuple, out: torch.Tensor) -> None:
            out.retain_grad()
            acts[name] = out

        return fn

    handles = [folded.get_submodule(n).register_forward_hook(hook(n)) for n in scores]
    try:
        for i, xb in enumerate(batches):
            folded.zero_grad()
            outputs = folded(xb)
            if loss is None:
                F.cross_entropy(outputs, outputs.argmax(dim=1)).backward()
            else:
                loss(outputs, targets[i]).backward()
            for name, a in acts.items():
                contrib = a * a.grad
                if contrib.dim() > 2:  # sum over positions: the loss change of removing the whole channel
                    contrib = contrib.sum(dim=tuple(range(2, contrib.dim())))
                scores[name] += contrib.abs().mean(dim=0).double().detach()
    finally:
        for h in handles:
            h.remove()
    return {n: (s / len(batches)).cpu().numpy() for n, s in scores.items()}


def channel_ranking(analysis: ModelAnalysis, importance: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Per layer, output channels from most to least important.

    Layers whose outputs are coupled (pruned together) share one ranking: the sum over
    the group's producers of each producer's scores normalised by their mean, so that a
    layer-level sparsity decision in any member prunes the same channels.
    """
    ranking: dict[str, tuple[int, ...]] = {}
    for group in analysis.groups:
        if not group.producers:
            continue
        total = np.zeros(group.channels)
        for name in group.producers:
            s = np.asarray(importance[name], dtype=np.float64)
            total += s / max(float(s.mean()), 1e-12)
        order = tuple(int(i) for i in np.argsort(-total, kind="stable"))
        for name in group.producers:
            ranking[name] = order
    return ranking
