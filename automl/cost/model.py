"""Price policies on an analysed model, from the policy alone (no forward pass).

Conventions (the float model and every policy are priced by the same formulas):

- **Size.** The bytes of the packed export file (:mod:`automl.export.ampq`), to within the
  padding of its compressed header. Per layer: the codes of its quantized (< 32-bit)
  kept channels at their bit-widths in one stream padded to a whole byte; float rows of
  32-bit channels at 32 bits; one 32-bit scale per kept quantized channel; one bit-width
  byte per kept channel; BatchNorm folded into the preceding convolution, so a layer
  with a bias or a folded BatchNorm stores one 32-bit bias per kept output channel (the
  BatchNorm's own four parameters are not counted separately). Modules left at full
  precision (``ModelAnalysis.unquantized``) at 32 bits, shrinking with their channel
  group when they follow one. Plus ``container_bytes`` once: the file's prefix and
  compressed header, measured by :func:`automl.export.ampq.container_bytes` (0 when not
  given, e.g. in unit tests). The **float size** is the same formulas at 32 bits for
  every channel, none pruned: the ``.ampq`` file of the unpruned float model (no
  scales, no codes), which is what ``x``-relative size budgets are fractions of; a
  ``torch.save`` of the float ``state_dict`` is larger (BatchNorms unfolded, zip and
  pickle framing). Sizes are in bytes.
- **Pruning.** A channel pruned in one producer of a coupled group is pruned in all
  (union, as :meth:`SearchSpace.resolve`); a layer reading a group loses those input
  features (``Segment.features_per_channel`` each); a depthwise layer keeps one input per
  kept output channel.
- **MACs / BitOps.** MACs of the pruned network per sample; BitOps = sum over kept output
  channels of MACs x weight bits x input activation bits (32-bit float counts as 32).
  Both count an N:M layer's multiplies densely (its zeros included), whatever the hardware.
- **N:M layers.** Size as above for the kept values plus their block index (see
  :meth:`CostModel.layer_size_bits`); latency divides the layer's compute term by the
  speedup its profile declares (``nm_speedup``, :class:`~automl.cost.hardware.HardwareProfile`),
  and equals the dense latency on a profile that declares none.
- **Peak activation memory.** The largest, over layers, of the layer's input (kept
  features at its activation bits) plus its output (kept channels at the widest activation
  bits among the layers reading it, 32 bits for a model output), per sample.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property

import numpy as np

from automl.cost.batch import NM_CHOICES, LayerBatch
from automl.cost.costs import Costs, latency_metric
from automl.cost.profiles import HardwareProfile
from automl.errors import PolicyError, ProfileError, SearchSpaceError
from search_spaces.network import ModelAnalysis
from search_spaces.policy import FLOAT_BITS, NM_PATTERNS, Policy, parse_nm
from search_spaces.space import SearchSpace

_NM_NM = [(1, 1)] + [parse_nm(p)[:2] for p in NM_PATTERNS]
_NM_DENSITY = np.array([n / m for n, m in _NM_NM])
_NM_M = np.array([float(m) for _, m in _NM_NM])
_NM_INDEX_BITS = np.array([0.0] + [float(math.ceil(math.log2(math.comb(m, n)))) for n, m in _NM_NM[1:]])


def _nm_bits_per_weight(pattern: str, bits: int) -> float:
    """Stored bits per weight of a layer at ``bits`` under ``pattern`` (values plus index)."""
    i = NM_CHOICES.index(pattern)
    return bits * _NM_DENSITY[i] + _NM_INDEX_BITS[i] / _NM_M[i]


class CostModel:
    """Prices policies of one search space on one analysed model.

    Args:
        analysis: the analysed model.
        space: the search space built from ``analysis`` (defines the layer order).
        profiles: hardware profiles whose latency every price includes.
        container_bytes: bytes every export file needs besides the layers' tensors (prefix,
            compressed graph header, constant tensors): :func:`automl.export.ampq.container_bytes`.
    """

    def __init__(
        self, analysis: ModelAnalysis, space: SearchSpace, profiles: Sequence[HardwareProfile] = (),
        container_bytes: float = 0.0,
    ) -> None:
        if analysis.names != space.names:
            raise SearchSpaceError(
                f"the search space was built for layers {list(space.names)}, the analysis has "
                f"{list(analysis.names)}. Build both from the same model."
            )
        self.analysis = analysis
        self.space = space
        self.profiles = tuple(profiles)
        names = [p.name for p in self.profiles]
        if len(set(names)) != len(names):
            raise ProfileError(f"two hardware profiles share a name: {names}. Give each profile its own 'name'.")
        self.names = space.names
        self.container_bytes = float(container_bytes)
        self._build_tables()
        for p in self.profiles:
            p.check(self.names, [int(x) for x in self.in_total], [int(x) for x in self.out_total])

    # tables ------------------------------------------------------------------------
    def _build_tables(self) -> None:
        layers = self.analysis.layers
        self.out_total = np.array([lay.out_channels for lay in layers])
        self.offsets = np.concatenate([[0], np.cumsum(self.out_total)[:-1]]).astype(np.int64)
        self.n_channels = int(self.out_total.sum())
        group_by_id = {g.gid: g for g in self.analysis.groups}
        # Groups with a producer: their channels' kept state is the AND over producers.
        self.group_ids = tuple(sorted({lay.out_group for lay in layers}))
        gindex = {g: i for i, g in enumerate(self.group_ids)}
        self.group_channels = np.array([group_by_id[g].channels for g in self.group_ids])
        self.group_offsets = np.concatenate([[0], np.cumsum(self.group_channels)[:-1]]).astype(np.int64)
        producers: dict[int, list[int]] = {g: [] for g in self.group_ids}
        for li, lay in enumerate(layers):
            producers[lay.out_group].append(li)
        self._chan_gc = np.empty(self.n_channels, dtype=np.int64)
        for g, members in producers.items():
            base = self.group_offsets[gindex[g]]
            for li in members:
                chans = np.arange(self.out_total[li])
                self._chan_gc[self.offsets[li] + chans] = base + chans
        # Producer slots: slot k lists, for every group channel with a k-th producer, that
        # producer's channel. A group channel is kept when it is kept in every slot.
        order = np.argsort(self._chan_gc, kind="stable")
        starts = np.searchsorted(self._chan_gc[order], np.arange(int(self.group_channels.sum())))
        per_channel = np.diff(np.append(starts, order.size))
        self._slots = [
            (sel, order[starts[sel] + k]) for k in range(int(per_channel.max())) for sel in [np.flatnonzero(per_channel > k)]
        ]
        self._hist_base = np.repeat(np.arange(len(layers)), self.out_total) * 33
        self.out_gidx = np.array([gindex[lay.out_group] for lay in layers])
        self._build_inputs(gindex)
        self._build_shapes(gindex)

    def _build_inputs(self, gindex: dict[int, int]) -> None:
        """Input features (a constant part from groups nobody produces + kept channels x
        features per channel) and, per layer, the layers that read its output."""
        layers = self.analysis.layers
        self.in_const = np.zeros(len(layers))
        self.in_matrix = np.zeros((len(self.group_ids), len(layers)))
        consumers: dict[int, list[int]] = {}
        for li, lay in enumerate(layers):
            for seg in lay.in_segments:
                if seg.group in gindex:
                    self.in_matrix[gindex[seg.group], li] += seg.features_per_channel
                    consumers.setdefault(seg.group, []).append(li)
                else:
                    self.in_const[li] += seg.channels * seg.features_per_channel
        self.in_total = self.in_const + self.group_channels @ self.in_matrix
        self.consumers = tuple(tuple(dict.fromkeys(consumers.get(lay.out_group, []))) for lay in layers)
        # Readers' activation bits are gathered from [act | 0 | 32]: padding reads the 0
        # column, a layer nobody reads (a model output) reads the 32 column.
        cw = max([len(c) for c in self.consumers] + [1])
        self._cons = np.full((len(layers), cw), len(layers), dtype=np.int64)
        for li, cons in enumerate(self.consumers):
            self._cons[li, : len(cons)] = cons
            if not cons:
                self._cons[li, 0] = len(layers) + 1

    def _build_shapes(self, gindex: dict[int, int]) -> None:
        """Per-layer constants and the full-precision modules' parameters."""
        layers = self.analysis.layers
        self.kernel = np.array([lay.kernel_numel for lay in layers], dtype=float)
        self.depthwise = np.array([lay.depthwise for lay in layers])
        self._per_input = self.kernel / np.array([lay.groups for lay in layers], dtype=float)
        self.out_spatial = np.array([lay.out_spatial for lay in layers], dtype=float)
        self.in_elem_per_feature = np.array([np.prod(lay.in_shape) for lay in layers], dtype=float) / self.in_total
        self.out_elem_per_channel = np.array([np.prod(lay.out_shape) for lay in layers], dtype=float) / self.out_total
        self.has_bias = np.array([lay.bias_params > 0 or lay.folded_bn is not None for lay in layers], dtype=float)
        # Full-precision modules: those following a group shrink with it.
        followers = {f: g.gid for g in self.analysis.groups for f in g.followers if g.gid in gindex}
        self.follower_params = np.zeros(len(self.group_ids))
        self.fixed_params = 0.0
        for name, _kind, params in self.analysis.unquantized:
            if name in followers:
                g = gindex[followers[name]]
                self.follower_params[g] += params / self.group_channels[g]
            else:
                self.fixed_params += params
        self._any_depthwise = bool(self.depthwise.any())
        self._sentinels = np.zeros((1, 2), dtype=np.int64)
        self._sentinels[:, 1] = FLOAT_BITS
        self._lut_bits = np.arange(FLOAT_BITS + 1, dtype=float)
        self._lut_quant = ((self._lut_bits > 0) & (self._lut_bits < FLOAT_BITS)).astype(float)
        self._size_luts = np.stack(
            [self._lut_bits * self._lut_quant, (self._lut_bits == FLOAT_BITS).astype(float), self._lut_quant], axis=1
        )

    # vectorised core -----------------------------------------------------------------
    def layer_batch(self, bits: np.ndarray, act_bits: np.ndarray, nm: np.ndarray | None = None) -> LayerBatch:
        """Decode ``bits`` (``[n, C]``, all layers' channels concatenated) and ``act_bits`` (``[n, L]``).

        ``nm`` (``[n, L]`` or ``[L]``, indices into :data:`NM_CHOICES`, 0 = dense) gives each
        layer's N:M pattern; ``None`` means every layer is dense.
        """
        n = bits.shape[0]
        kept = bits > 0
        kept_gc = kept[:, self._slots[0][1]]
        for sel, idx in self._slots[1:]:
            kept_gc[:, sel] &= kept[:, idx]
        eff = bits * kept_gc[:, self._chan_gc]
        group_kept = np.add.reduceat(kept_gc, self.group_offsets, axis=1).astype(float)
        kept_out = group_kept[:, self.out_gidx]
        kept_in = self.in_const + group_kept @ self.in_matrix
        wpo = kept_in * self._per_input
        if self._any_depthwise:
            wpo = np.where(self.depthwise, self.kernel, wpo)
        sentinels = self._sentinels if n == 1 else np.repeat(self._sentinels, n, axis=0)
        act_ext = np.concatenate([act_bits, sentinels], axis=1)
        out_bits = act_ext[:, self._cons].max(axis=2)
        return LayerBatch(
            names=self.names, eff_bits=eff, offsets=self.offsets, act_bits=act_bits, out_bits=out_bits,
            kept_in=kept_in, in_total=self.in_total, kept_out=kept_out, out_total=self.out_total,
            weights_per_out=wpo, out_spatial=self.out_spatial, in_elems=kept_in * self.in_elem_per_feature,
            out_elems=kept_out * self.out_elem_per_channel, group_kept=group_kept, hist_base=self._hist_base,
            nm=None if nm is None else np.broadcast_to(np.asarray(nm, dtype=np.int64), act_bits.shape),
        )

    def layer_size_bits(self, batch: LayerBatch) -> np.ndarray:
        """``[n, L]`` stored bits of every layer: codes (one byte-padded stream), float rows,
        per-channel scales, bit-width bytes and biases."""
        wpo = batch.weights_per_out
        sums = batch.bit_histogram @ self._size_luts  # [n, L, 3]: code bits, float channels, quantized channels
        meta = FLOAT_BITS * (self.has_bias * batch.kept_out + sums[..., 2]) + 8.0 * batch.kept_out
        dense = np.ceil(sums[..., 0] * wpo / 8.0 - 1e-6) * 8.0 + sums[..., 1] * wpo * FLOAT_BITS
        if batch.nm is None or not batch.nm.any():
            return dense + meta
        # An N:M layer stores, per kept output channel, N values of every block of M along its
        # full reduction dimension (the mask was fitted on the unpruned rows, so upstream input
        # pruning does not shrink it) and, per block, ceil(log2(C(M, N))) bits naming the kept
        # positions (3 bits for 2:4) in a byte-padded index stream.
        k_full = self.in_total * self._per_input
        values = k_full * _NM_DENSITY[batch.nm]
        index = np.ceil(batch.kept_out * (k_full / _NM_M[batch.nm]) * _NM_INDEX_BITS[batch.nm] / 8.0 - 1e-6) * 8.0
        sparse = np.ceil(sums[..., 0] * values / 8.0 - 1e-6) * 8.0 + sums[..., 1] * values * FLOAT_BITS + index
        return np.where(batch.nm > 0, sparse, dense) + meta

    def group_size_bits(self, batch: LayerBatch) -> np.ndarray:
        """``[n, G]`` bits of the full-precision modules that shrink with each group."""
        return FLOAT_BITS * batch.group_kept * self.follower_params

    @property
    def fixed_size_bits(self) -> float:
        """Bits of full-precision modules that no pruning touches, plus the file's container."""
        return FLOAT_BITS * self.fixed_params + 8.0 * self.container_bytes

    def _table(self, bits: np.ndarray, act_bits: np.ndarray, nm: np.ndarray | None = None) -> dict[str, np.ndarray]:
        b = self.layer_batch(bits, act_bits, nm)
        size = self.layer_size_bits(b).sum(axis=1) + self.group_size_bits(b).sum(axis=1) + self.fixed_size_bits
        out = {
            "size": size / 8.0,
            "macs": b.macs.sum(axis=1),
            "bitops": (b.macs_per_channel * b.weight_bits_sum * b.act_bits).sum(axis=1),
            "peak_act": (b.in_elems * b.act_bits + b.out_elems * b.out_bits).max(axis=1) / 8.0,
        }
        for p in self.profiles:
            out[latency_metric(p.name)] = p.latency_ms(b)
        return out

    # public API ----------------------------------------------------------------------
    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric this model prices (the keys of :meth:`price_batch`)."""
        return ("size", "macs", "bitops", "peak_act") + tuple(latency_metric(p.name) for p in self.profiles)

    def policy_arrays(self, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
        """``(bits [C], act_bits [L])`` of ``policy``, checked against the layers."""
        layers = policy.layers
        if policy.names != self.names or [len(lp.weight_bits) for _, lp in layers] != self._out_list:
            self.space.validate(policy)
            raise PolicyError("the policy does not match the model's layers")  # validate() names the cause
        # bytes() packs the 0..32 bit-widths in one C loop: the fastest way from tuples to an array.
        bits = np.frombuffer(bytes(itertools.chain.from_iterable(lp.weight_bits for _, lp in layers)), dtype=np.uint8)
        act = np.fromiter((lp.act_bits for _, lp in layers), dtype=np.int64, count=len(layers))
        return bits, act

    def policy_nm(self, policy: Policy) -> np.ndarray | None:
        """``[L]`` N:M pattern index of every layer of ``policy`` (see :data:`NM_CHOICES`), ``None`` if all dense."""
        if not any(lp.nm for _, lp in policy.layers):
            return None
        return np.array([NM_CHOICES.index(lp.nm) for _, lp in policy.layers], dtype=np.int64)

    @cached_property
    def _out_list(self) -> list[int]:
        return [int(c) for c in self.out_total]

    def price(self, policy: Policy) -> Costs:
        """Price ``policy`` (channel coupling applied) on every metric and profile."""
        bits, act = self.policy_arrays(policy)
        table = self._table(bits[None, :], act[None, :], self.policy_nm(policy))
        return Costs(
            size_bytes=float(table["size"][0]),
            macs=float(table["macs"][0]),
            bitops=float(table["bitops"][0]),
            peak_act_bytes=float(table["peak_act"][0]),
            latency_ms=tuple((p.name, float(table[latency_metric(p.name)][0])) for p in self.profiles),
        )

    def price_batch(self, weight_bits: Sequence[np.ndarray], act_bits: np.ndarray) -> dict[str, np.ndarray]:
        """Price ``n`` policies at once.

        Args:
            weight_bits: per layer in space order, an int array ``[n, C_l]`` of channel bits.
            act_bits: int array ``[n, L]`` of activation bits.

        Returns:
            metric -> ``[n]`` values, with the keys of :meth:`Costs.value`.
        """
        if len(weight_bits) != len(self.names):
            raise PolicyError(f"expected weight bits of {len(self.names)} layers, got {len(weight_bits)}")
        act = np.asarray(act_bits, dtype=np.int64)
        n = act.shape[0]
        for name, w, c in zip(self.names, weight_bits, self._out_list, strict=True):
            if np.shape(w) != (n, c):
                raise PolicyError(f"layer {name!r}: expected weight bits of shape ({n}, {c}), got {np.shape(w)}")
        if act.shape != (n, len(self.names)):
            raise PolicyError(f"expected activation bits of shape ({n}, {len(self.names)}), got {act.shape}")
        bits = np.concatenate([np.asarray(w, dtype=np.int64) for w in weight_bits], axis=1)
        return self._table(bits, act)

    def price_arrays(
        self, bits: np.ndarray, act_bits: np.ndarray, nm: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Like :meth:`price_batch` with the layers' channel bits already concatenated (``[n, C]``);
        ``nm`` as in :meth:`layer_batch`."""
        return self._table(np.asarray(bits), np.asarray(act_bits, dtype=np.int64), nm)

    @cached_property
    def _float(self) -> Costs:
        bits = np.full((1, self.n_channels), FLOAT_BITS, dtype=np.int64)
        act = np.full((1, len(self.names)), FLOAT_BITS, dtype=np.int64)
        t = self._table(bits, act)
        return Costs(
            float(t["size"][0]), float(t["macs"][0]), float(t["bitops"][0]), float(t["peak_act"][0]),
            tuple((p.name, float(t[latency_metric(p.name)][0])) for p in self.profiles),
        )

    def float_costs(self) -> Costs:
        """Costs of the unpruned float model (every weight and activation at 32 bits)."""
        return self._float

    @cached_property
    def _cheapest(self) -> Policy:
        out = []
        for s in self.space.layers:
            wb = s.nonzero_bits[0]
            nm = min(s.nm_patterns, key=lambda p: _nm_bits_per_weight(p, wb))  # the smallest storage
            for level in sorted(s.sparsity_levels, reverse=True):
                try:
                    lp = self.space.decode(s.name, level, [wb] * s.n_groups, s.act_bits[0], nm)
                    break
                except PolicyError:
                    continue
            out.append((s.name, lp))
        return Policy(tuple(out))

    def lowest_costs(self) -> Costs:
        """A lower bound of every metric over the space: the per-metric minimum of
        :meth:`cheapest_policy` and of the same policy at its widest activation bits (on
        ONNX Runtime a quantized activation costs time, so latency is not monotone in
        activation bits there)."""
        wide = Policy(tuple((n, replace(lp, act_bits=s.act_bits[-1]))
                            for (n, lp), s in zip(self._cheapest, self.space.layers, strict=True)))
        a, b = self.price(self._cheapest), self.price(wide)
        lat = tuple((name, min(v, dict(b.latency_ms)[name])) for name, v in a.latency_ms)
        return Costs(a.size_bytes, a.macs, a.bitops, a.peak_act_bytes, lat)

    def cheapest_policy(self) -> Policy:
        """Every free layer at its lowest non-zero weight bits, lowest activation bits and
        highest sparsity level (pinned layers at their pinned bits): the lowest cost in the
        space on every metric, since all costs are monotone in bits and kept channels."""
        return self._cheapest
