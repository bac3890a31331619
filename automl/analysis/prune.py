"""Physical pruning: a policy's 0-bit channels removed from a real, smaller float network."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from automl.errors import PolicyError
from search_spaces.network import ModelAnalysis
from search_spaces.policy import Policy


def keep_masks(analysis: ModelAnalysis, policy: Policy) -> dict[int, np.ndarray]:
    """Per channel group, which channels survive (a channel pruned by any producer goes).

    Groups that are not prunable (model input and output, untraced tensors) keep all
    channels; pruning one of their channels is reported as an error.
    """
    by_name = policy.as_dict()
    masks = {g.gid: np.ones(g.channels, dtype=bool) for g in analysis.groups}
    for layer in analysis.layers:
        lp = by_name.get(layer.name)
        if lp is None:
            raise PolicyError(f"the policy has no entry for layer {layer.name!r}")
        if len(lp.weight_bits) != layer.out_channels:
            raise PolicyError(
                f"layer {layer.name!r}: the policy gives {len(lp.weight_bits)} channel bit-widths, the layer has "
                f"{layer.out_channels} output channels"
            )
        pruned = np.asarray(lp.weight_bits) == 0
        if pruned.any():
            group = analysis.groups[layer.out_group]
            if not group.prunable:
                raise PolicyError(f"layer {layer.name!r} prunes channels, but its outputs cannot be pruned: {group.reason}")
            masks[layer.out_group] &= ~pruned
    for gid, m in masks.items():
        if not m.any():
            raise PolicyError(f"every channel of group {gid} ({analysis.groups[gid].producers}) is pruned")
    return masks


def in_keep_mask(analysis: ModelAnalysis, name: str, masks: dict[int, np.ndarray]) -> np.ndarray:
    """Which input features of layer ``name`` survive (``masks`` from :func:`keep_masks`)."""
    layer = analysis.layer(name)
    return np.concatenate([np.repeat(masks[s.group], s.features_per_channel) for s in layer.in_segments])


def _slice_follower(mod: nn.Module, keep: torch.Tensor) -> nn.Module:
    if not isinstance(mod, nn.modules.batchnorm._BatchNorm):
        raise PolicyError(f"cannot slice channels of {type(mod).__name__}")
    new = type(mod)(int(keep.sum()), mod.eps, mod.momentum, mod.affine, mod.track_running_stats,
                    device=mod.running_mean.device if mod.running_mean is not None else None)
    with torch.no_grad():
        if mod.affine:
            new.weight.copy_(mod.weight[keep])
            new.bias.copy_(mod.bias[keep])
        if mod.track_running_stats:
            new.running_mean.copy_(mod.running_mean[keep])
            new.running_var.copy_(mod.running_var[keep])
            new.num_batches_tracked.copy_(mod.num_batches_tracked)
    return new.train(mod.training)


def prune_model(model: nn.Module, analysis: ModelAnalysis, policy: Policy) -> nn.Module:
    """A copy of ``model`` without the channels ``policy`` prunes (float weights kept).

    Output channels of every producer in a pruned group are removed together with the
    matching input channels (or flattened input features) of every consumer and the
    channels of BatchNorm followers. The result computes what the masked network does,
    on the model's device.
    """
    masks = keep_masks(analysis, policy)
    pruned = copy.deepcopy(model)
    for layer in analysis.layers:
        mod = pruned.get_submodule(layer.name)
        device = mod.weight.device
        out_keep = torch.from_numpy(masks[layer.out_group]).to(device)
        in_keep = torch.from_numpy(in_keep_mask(analysis, layer.name, masks)).to(device)
        with torch.no_grad():
            w = mod.weight[out_keep]
            if layer.kind == "linear":
                new: nn.Module = nn.Linear(int(in_keep.sum()), int(out_keep.sum()), bias=mod.bias is not None, device=device)
                new.weight.copy_(w[:, in_keep])
            elif layer.depthwise:
                n = int(out_keep.sum())
                conv_cls = nn.Conv2d if layer.kind == "conv2d" else nn.Conv1d
                new = conv_cls(n, n, mod.kernel_size, mod.stride, mod.padding, mod.dilation, n, mod.bias is not None,
                               mod.padding_mode, device=device)
                new.weight.copy_(w)
            else:
                if layer.groups != 1:
                    if not (bool(in_keep.all()) and bool(out_keep.all())):
                        raise PolicyError(f"grouped convolution {layer.name!r} cannot be pruned")
                    continue
                conv_cls = nn.Conv2d if layer.kind == "conv2d" else nn.Conv1d
                new = conv_cls(
                    int(in_keep.sum()), int(out_keep.sum()), mod.kernel_size, mod.stride, mod.padding, mod.dilation, 1,
                    mod.bias is not None, mod.padding_mode, device=device,
                )
                new.weight.copy_(w[:, in_keep])
            if mod.bias is not None:
                new.bias.copy_(mod.bias[out_keep])
        pruned.set_submodule(layer.name, new.train(mod.training))
    for group in analysis.groups:
        keep = torch.from_numpy(masks[group.gid])
        for follower in group.followers:
            bn = pruned.get_submodule(follower)
            device = bn.running_mean.device if getattr(bn, "running_mean", None) is not None else keep.device
            pruned.set_submodule(follower, _slice_follower(bn, keep.to(device)))
    return pruned


def mask_model(model: nn.Module, analysis: ModelAnalysis, policy: Policy) -> nn.Module:
    """A same-shape copy of ``model`` whose pruned channels are exactly zero.

    The reference that :func:`prune_model` must reproduce: pruned output rows, biases and
    BatchNorm affine parameters are zeroed, so a pruned channel carries 0 everywhere.
    """
    masks = keep_masks(analysis, policy)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for layer in analysis.layers:
            mod = masked.get_submodule(layer.name)
            drop = torch.from_numpy(~masks[layer.out_group])
            mod.weight[drop] = 0
            if mod.bias is not None:
                mod.bias[drop] = 0
        for group in analysis.groups:
            drop = torch.from_numpy(~masks[group.gid])
            for follower in group.followers:
                bn = masked.get_submodule(follower)
                if bn.affine:
                    bn.weight[drop] = 0
                    bn.bias[drop] = 0
    return masked
