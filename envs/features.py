"""Normalised per-layer features for the envs' observations (HAQ's layer embedding).

Each feature is min-max scaled over the model's layers into [0, 1]; features spanning
orders of magnitude (channels, feature-map size, parameters, MACs) are scaled on a log
axis first, so a 64x larger layer does not squash all the others to zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from automl.errors import ConfigError
from search_spaces.network import LayerInfo, ModelAnalysis

KINDS = ("conv1d", "conv2d", "linear")
LAYER_FEATURES = (
    "index", *(f"kind_{k}" for k in KINDS), "depthwise", "in_channels", "out_channels", "kernel", "stride",
    "feature_map", "params", "macs", "sensitivity",
)


def _minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return np.zeros_like(values) if hi - lo <= 0 else (values - lo) / (hi - lo)


def _unit(values: np.ndarray) -> np.ndarray:
    """Scaled by the largest value (a constant sensitivity stays informative, unlike min-max)."""
    top = float(values.max(initial=0.0))
    return values / top if top > 0 else np.zeros_like(values)


def _feature_map(layer: LayerInfo) -> int:
    """Input positions per sample (the spatial size the layer slides over)."""
    n = 1
    for s in layer.in_shape[1:] if layer.kind != "linear" else layer.in_shape[:-1]:
        n *= s
    return n


def sensitivity_vector(
    names: Sequence[str], sensitivity: Mapping[str, float] | Sequence[float] | np.ndarray | None
) -> np.ndarray:
    """Per-layer sensitivity in space order (zeros when not given)."""
    if sensitivity is None:
        return np.zeros(len(names))
    if isinstance(sensitivity, Mapping):
        unknown = sorted(set(sensitivity) - set(names))
        if unknown:
            raise ConfigError(
                f"sensitivity names layers {unknown} the model does not have; its layers are {list(names)}"
            )
        return np.array([float(sensitivity.get(n, 0.0)) for n in names])
    values = np.asarray(sensitivity, dtype=float).reshape(-1)
    if values.shape != (len(names),):
        raise ConfigError(
            f"sensitivity must give one value per layer ({len(names)}, in the search space's order) or map "
            f"layer names to values; got {values.shape[0]} values"
        )
    if not np.isfinite(values).all():
        raise ConfigError("sensitivity values must be finite numbers")
    return values


def layer_features(analysis: ModelAnalysis, sensitivity: np.ndarray) -> np.ndarray:
    """``[L, len(LAYER_FEATURES)]`` float32 features in [0, 1], one row per layer."""
    layers = analysis.layers
    n = len(layers)
    index = np.arange(n) / max(n - 1, 1)
    kind = np.array([[float(lay.kind == k) for k in KINDS] for lay in layers]).reshape(n, len(KINDS))
    depthwise = np.array([float(lay.depthwise) for lay in layers])
    log = np.log1p
    cols = [
        index[:, None],
        kind,
        depthwise[:, None],
        _minmax(log(np.array([lay.in_channels for lay in layers], dtype=float)))[:, None],
        _minmax(log(np.array([lay.out_channels for lay in layers], dtype=float)))[:, None],
        _minmax(np.array([lay.kernel_numel for lay in layers], dtype=float))[:, None],
        _minmax(np.array([max(lay.stride, default=1) for lay in layers], dtype=float))[:, None],
        _minmax(log(np.array([_feature_map(lay) for lay in layers], dtype=float)))[:, None],
        _minmax(log(np.array([lay.params for lay in layers], dtype=float)))[:, None],
        _minmax(log(np.array([lay.macs for lay in layers], dtype=float)))[:, None],
        _unit(np.abs(sensitivity))[:, None],
    ]
    return np.concatenate(cols, axis=1).astype(np.float32)
