"""Per-layer quantities of ``n`` policies at once, the input of every cost formula.

:class:`LayerBatch` is built by :class:`automl.cost.model.CostModel` from per-channel
weight bits and per-layer activation bits after channel coupling has been applied, and is
handed to hardware profiles so that they price latency with the same numbers the model
uses for size, MACs and BitOps. Arrays are ``[n, L]`` (policies x layers in space order)
unless noted. It is internal scratch data (never serialised), so it is a plain mutable
dataclass: building a frozen one costs more than pricing a policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from search_spaces.policy import NM_PATTERNS

NM_CHOICES = ("", *NM_PATTERNS)  # index 0 = dense; the index :attr:`LayerBatch.nm` carries per layer


@dataclass(eq=False)
class LayerBatch:
    """The decoded shape and precision of every layer of ``n`` policies.

    Attributes:
        names: layer names in space order.
        eff_bits: ``[n, C]`` weight bits of every output channel of every layer (layers
            concatenated in order), 0 where the channel is pruned after coupling.
        offsets: ``[L]`` start of each layer's channels in ``eff_bits``.
        act_bits: bits of each layer's input activation.
        out_bits: bits at which each layer's output is stored (the widest activation bits
            among the layers that read it; 32 for a model output).
        kept_in: input features kept (channels for a convolution, features for a Linear).
        in_total: ``[L]`` input features of the unpruned layer.
        kept_out: output channels kept.
        out_total: ``[L]`` output channels of the unpruned layer.
        weights_per_out: weights of one kept output channel (after input pruning).
        out_spatial: ``[L]`` output positions per sample.
        in_elems: input activation elements per sample after pruning.
        out_elems: output activation elements per sample after pruning.
        group_kept: ``[n, G]`` channels kept of every group that has a producer (in the
            order of :attr:`automl.cost.model.CostModel.group_ids`).
        hist_base: ``[C]`` 33 x the layer index of every channel (for :attr:`bit_histogram`).
        nm: ``[n, L]`` N:M pattern index of every layer (:data:`NM_CHOICES`,
            0 = dense), or ``None`` when every layer is dense.
    """

    names: tuple[str, ...]
    eff_bits: np.ndarray
    offsets: np.ndarray
    act_bits: np.ndarray
    out_bits: np.ndarray
    kept_in: np.ndarray
    in_total: np.ndarray
    kept_out: np.ndarray
    out_total: np.ndarray
    weights_per_out: np.ndarray
    out_spatial: np.ndarray
    in_elems: np.ndarray
    out_elems: np.ndarray
    group_kept: np.ndarray
    hist_base: np.ndarray
    nm: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.eff_bits.shape[0])

    @cached_property
    def alive(self) -> np.ndarray:
        """``[n, L]`` 1.0 where a layer keeps at least one output channel, else 0.0."""
        return (self.kept_out > 0).astype(float)

    @cached_property
    def macs_per_channel(self) -> np.ndarray:
        """``[n, L]`` multiply-accumulates of one kept output channel of each layer."""
        return self.out_spatial * self.weights_per_out

    @cached_property
    def macs(self) -> np.ndarray:
        """``[n, L]`` multiply-accumulates of each layer."""
        return self.macs_per_channel * self.kept_out

    @cached_property
    def weight_bits_sum(self) -> np.ndarray:
        """``[n, L]`` sum of the weight bits of every kept output channel."""
        return self.bit_histogram @ np.arange(33.0)

    @cached_property
    def bit_histogram(self) -> np.ndarray:
        """``[n, L, 33]``: how many output channels of each layer have each bit-width 0..32."""
        n = self.eff_bits.shape[0]
        size = len(self.offsets) * 33
        index = self.eff_bits + self.hist_base
        if n > 1:
            index = index + (np.arange(n) * size)[:, None]
        return np.bincount(index.ravel(), minlength=n * size).reshape(n, -1, 33).astype(float)

    def channel_sum(self, lut: np.ndarray) -> np.ndarray:
        """``[n, L]``: per layer, the sum over output channels of ``lut[bits]``.

        ``lut`` has 33 entries (bits 0..32); ``lut[0]`` must be 0 so that pruned channels
        contribute nothing.
        """
        return self.bit_histogram @ lut
