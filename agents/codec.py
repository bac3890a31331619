"""Flat integer parameters <-> policies, and the uniform-precision baselines.

Black-box samplers (Optuna's TPE, NSGA-II, GP, CMA-ES) see a policy as a flat vector of
integers: per free layer, the index of its sparsity level, of each channel group's weight
bits and of its activation bits. Every value goes through :meth:`SearchSpace.decode`, the one
mapping from layer decisions to per-channel bits. Indices keep the choices ordinal (4 bits
lies between 3 and 5), which TPE's kernels, CMA-ES and GP all exploit.

Pruning is decided by the sparsity level alone: group bit-widths range over the layer's
non-zero widths, since pruning a whole group is the same as a sparsity level of that size
and listing it twice would only dilute the sampler's model.
"""

from __future__ import annotations

from collections.abc import Mapping

from automl.errors import PolicyError
from search_spaces.policy import LayerPolicy, Policy
from search_spaces.space import LayerSpace, SearchSpace


class PolicyCodec:
    """Encodes the free layers of ``space`` as integer parameters named ``<layer>/sp``, ``<layer>/w<g>``, ``<layer>/a``."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.ranges: dict[str, int] = {}  # parameter -> number of choices (> 1)
        for s in space.layers:
            for key, n in self._layer_params(s):
                if n > 1:
                    self.ranges[key] = n

    @staticmethod
    def _layer_params(s: LayerSpace) -> list[tuple[str, int]]:
        out = [(f"{s.name}/sp", len(s.sparsity_levels))]
        out += [(f"{s.name}/w{g}", len(s.nonzero_bits)) for g in range(s.n_groups)]
        out.append((f"{s.name}/a", len(s.act_bits)))
        return out

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.ranges)

    def decode(self, params: Mapping[str, int]) -> Policy:
        """The policy of ``params`` (missing parameters take index 0).

        A sparsity level that rounds to more pruned channels than the layer allows falls
        back to the next lower level.
        """
        out = []
        for s in self.space.layers:
            level_ix = int(params.get(f"{s.name}/sp", 0))
            bits = [s.nonzero_bits[int(params.get(f"{s.name}/w{g}", 0))] for g in range(s.n_groups)]
            act = s.act_bits[int(params.get(f"{s.name}/a", 0))]
            out.append((s.name, self._decode_layer(s, level_ix, bits, act)))
        return Policy(tuple(out))

    def _decode_layer(self, s: LayerSpace, level_ix: int, bits: list[int], act: int) -> LayerPolicy:
        for ix in range(level_ix, -1, -1):
            try:
                return self.space.decode(s.name, s.sparsity_levels[ix], bits, act)
            except PolicyError:
                if ix == 0:
                    raise
        raise AssertionError("unreachable: level 0 either decodes or raises")

    def encode(self, policy: Policy) -> dict[str, int] | None:
        """Parameters that decode to exactly ``policy``, or ``None`` if it is not expressible
        (bits that differ inside a channel group, or pruned channels off the importance order)."""
        params: dict[str, int] = {}
        for s, (_, lp) in zip(self.space.layers, self.space.validate(policy), strict=True):
            layer = self._encode_layer(s, lp)
            if layer is None:
                return None
            params.update({k: v for k, v in layer.items() if k in self.ranges})
        return params if self.decode(params) == policy else None

    @staticmethod
    def _encode_layer(s: LayerSpace, lp: LayerPolicy) -> dict[str, int] | None:
        pruned = sum(1 for b in lp.weight_bits if b == 0)
        levels = [i for i, lv in enumerate(s.sparsity_levels) if int(round(lv * s.out_channels)) == pruned]
        if not levels:
            return None
        out = {f"{s.name}/sp": levels[0], f"{s.name}/a": s.act_bits.index(lp.act_bits)}
        for g, members in enumerate(s.channel_groups):
            kept = {lp.weight_bits[c] for c in members} - {0}
            if len(kept) > 1:
                return None
            # A fully pruned group's bits do not matter: take the widest, as decode fills it before pruning.
            out[f"{s.name}/w{g}"] = s.nonzero_bits.index(kept.pop()) if kept else len(s.nonzero_bits) - 1
        return out


def uniform_policies(space: SearchSpace) -> list[tuple[int, float, Policy]]:
    """Every uniform-precision policy: ``(bits, sparsity, policy)`` for each weight bit-width
    the free layers share (activations at the same bits, or the nearest allowed) and each
    sparsity level (applied to every prunable layer), widest bits and least pruning first."""
    free = [s for s in space.layers if not s.pinned] or list(space.layers)
    bits = sorted(set.intersection(*(set(s.nonzero_bits) for s in free)), reverse=True)
    levels = sorted(set().union(*(set(s.sparsity_levels) for s in free)))
    out = []
    seen: set[str] = set()
    for b in bits:
        for lv in levels:
            try:
                policy = space.uniform(b, sparsity=lv)
            except PolicyError:
                continue
            if policy.key() not in seen:
                seen.add(policy.key())
                out.append((b, lv, policy))
    return out
