"""Flat integer parameters <-> policies (a compact encoding), and the uniform-precision baselines.

Black-box samplers (Optuna's TPE, NSGA-II, GP, CMA-ES) see a policy as a flat vector of
integers. The encoding is compact, because a sampler with ~150 trials cannot model ~120
dimensions (the former encoding: a sparsity per layer and one bit-width per channel group):

- ``<first member>/sp``: one sparsity level per prunable *coupled group* (layers whose output
  channels are pruned together share it: the network prunes the union of their channels,
  so only one level matters);
- ``<layer>/w`` and ``<layer>/a``: per free layer, its weight bits (over the non-zero widths)
  and its activation bits;
- ``spread`` (the default, ``spread="network"``): how far channel-group bits spread
  around each layer's ``w`` by importance: with spread ``s`` and ``G`` groups, group ``g``
  (0 = most important in the layer's own ranking) takes the width ``round(s * (1 - 2 g /
  (G - 1)))`` steps above ``w`` in the layer's width list, clipped; ``s = 0`` is uniform.
  ``spread="group"`` has one ``<first member>/spread`` per coupled group (its members share
  one importance ranking), ``spread="layer"`` one per layer, ``spread="none"`` none;
- ``<layer>/nm``: only with N:M sparsity on (``SpaceConfig.nm_patterns``), per layer that
  allows a pattern, the index into its ``nm_patterns`` (0 = dense; categorical, not ordinal).

Dimension count (``PolicyCodec(space).ranges``), default space (8 weight widths with 0,
6 activation widths, 4 channel groups, 7 sparsity levels, first and last layers pinned):

============  ==============  ==========  ===========  =============  ============
network       free layers     ``group``   ``layer``    ``network``    ``none``
============  ==============  ==========  ===========  =============  ============
ResNet-20     20              63 (3.15)   71 (3.55)    52 (2.6)       51 (2.55)
ResNet-8      8               27 (3.4)    29 (3.6)     22 (2.75)      21 (2.6)
============  ==============  ==========  ===========  =============  ============

(per free layer in brackets; the former encoding had 117 for ResNet-20). Per layer it is
``w`` + ``a`` plus, shared over each coupled group, one sparsity (and with ``group``, one
spread). The default is ``network``: one spread for the whole network, 2.6 parameters per
layer on ResNet-20 (issue 10's target is at most 3), and mixed precision inside every
layer is kept, since the importance order within each layer is its own. It did not lose
to ``group`` where both were measured: ``benchmarks/search_quality.py``'s ResNet-8 rows
with TPE over 3 seeds (``docs/results/search_quality_full_spread_network_rows.md``) and the
synthetic problem of ``benchmarks/searcher_learning.py``, each inside the seed spread.

Every value goes through :meth:`SearchSpace.decode`, the one mapping from layer decisions
to per-channel bits. Indices keep the choices ordinal (4 bits lies between 3 and 5), which
TPE's kernels, CMA-ES and GP all exploit. Pruning is decided by the sparsity level alone.
"""

from __future__ import annotations

from collections.abc import Mapping

from automl.errors import ConfigError, PolicyError
from search_spaces.policy import LayerPolicy, Policy
from search_spaces.space import LayerSpace, SearchSpace

SPREADS = ("group", "layer", "network", "none")
MAX_SPREAD = 2  # group bits lie at most 2 widths above / below the layer's
NETWORK_SPREAD = "spread"  # the one parameter of spread="network"


def spread_offsets(spread: int, n_groups: int) -> list[int]:
    """Width-index offsets of each channel group (most important first) for ``spread``."""
    if n_groups == 1 or spread == 0:
        return [0] * n_groups
    return [int(round(spread * (1.0 - 2.0 * g / (n_groups - 1)))) for g in range(n_groups)]


class PolicyCodec:
    """Encodes the free layers of ``space`` compactly (see the module docstring).

    Args:
        space: the search space.
        spread: ``network`` (one spread for the whole network, the default), ``group``
            (one per coupled group), ``layer`` or ``none``.

    Attributes:
        ranges: parameter name -> number of choices (every parameter has at least 2).
    """

    def __init__(self, space: SearchSpace, spread: str = "network") -> None:
        if spread not in SPREADS:
            raise ConfigError(f"spread must be one of {list(SPREADS)}, got {spread!r}")
        self.space = space
        self.spread = spread
        self.ranges: dict[str, int] = {}
        self._sp_key: dict[str, str] = {}  # layer -> its coupled group's sparsity parameter
        self._spread_key: dict[str, str] = {}
        for members in space.coupled().values():
            layers = [space.layer(m) for m in members]
            lead = members[0]
            levels = max((len(s.sparsity_levels) for s in layers), default=1)
            if levels > 1:
                self.ranges[f"{lead}/sp"] = levels
                self._sp_key.update({m: f"{lead}/sp" for m in members})
            if spread == "group" and any(self._spreadable(s) for s in layers):
                self.ranges[f"{lead}/spread"] = MAX_SPREAD + 1
                self._spread_key.update({s.name: f"{lead}/spread" for s in layers if self._spreadable(s)})
        for s in space.layers:
            if len(s.nonzero_bits) > 1:
                self.ranges[f"{s.name}/w"] = len(s.nonzero_bits)
            if len(s.act_bits) > 1:
                self.ranges[f"{s.name}/a"] = len(s.act_bits)
            if len(s.nm_patterns) > 1:
                self.ranges[f"{s.name}/nm"] = len(s.nm_patterns)
            if spread == "layer" and self._spreadable(s):
                self.ranges[f"{s.name}/spread"] = MAX_SPREAD + 1
                self._spread_key[s.name] = f"{s.name}/spread"
            if spread == "network" and self._spreadable(s):
                self.ranges[NETWORK_SPREAD] = MAX_SPREAD + 1
                self._spread_key[s.name] = NETWORK_SPREAD

    @staticmethod
    def _spreadable(s: LayerSpace) -> bool:
        return not s.pinned and s.n_groups > 1 and len(s.nonzero_bits) > 1

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.ranges)

    @property
    def dimension(self) -> int:
        return len(self.ranges)

    # decoding ------------------------------------------------------------------------
    def decode(self, params: Mapping[str, int]) -> Policy:
        """The policy of ``params`` (missing parameters take index 0).

        A sparsity level that rounds to more pruned channels than a layer allows falls back
        to the next lower level.
        """
        out = []
        for s in self.space.layers:
            level_ix = min(int(params.get(self._sp_key.get(s.name, ""), 0)), len(s.sparsity_levels) - 1)
            w = int(params.get(f"{s.name}/w", 0))
            spread = int(params.get(self._spread_key.get(s.name, ""), 0))
            top = len(s.nonzero_bits) - 1
            bits = [s.nonzero_bits[min(max(w + off, 0), top)] for off in spread_offsets(spread, s.n_groups)]
            act = s.act_bits[int(params.get(f"{s.name}/a", 0))]
            nm = s.nm_patterns[int(params.get(f"{s.name}/nm", 0))]
            out.append((s.name, self._decode_layer(s, level_ix, bits, act, nm)))
        return Policy(tuple(out))

    def _decode_layer(self, s: LayerSpace, level_ix: int, bits: list[int], act: int, nm: str = "") -> LayerPolicy:
        for ix in range(level_ix, -1, -1):
            try:
                return self.space.decode(s.name, s.sparsity_levels[ix], bits, act, nm)
            except PolicyError:
                if ix == 0:
                    raise
        raise AssertionError("unreachable: level 0 either decodes or raises")

    # encoding ------------------------------------------------------------------------
    def encode(self, policy: Policy) -> dict[str, int] | None:
        """Parameters that decode to exactly ``policy``, or ``None`` if it is not expressible
        (see :meth:`encode_nearest` for the closest expressible one)."""
        params = self.encode_nearest(policy)
        return params if self.decode(params) == policy else None

    def encode_nearest(self, policy: Policy) -> dict[str, int]:
        """Parameters of an expressible policy close to ``policy``: each coupled group at the
        most pruned level of its members, activations as given, and the layer widths and
        spread that reproduce the kept channel groups' widths best (least total index distance)."""
        params: dict[str, int] = {}
        by_spread: dict[str, list[tuple[LayerSpace, list[int | None]]]] = {}
        for s, (_, lp) in zip(self.space.layers, self.space.validate(policy), strict=True):
            pruned = sum(1 for b in lp.weight_bits if b == 0)
            key = self._sp_key.get(s.name)
            if key is not None:
                level = min(range(len(s.sparsity_levels)), key=lambda i: abs(round(s.sparsity_levels[i] * s.out_channels) - pruned))
                params[key] = max(params.get(key, 0), level)
            if f"{s.name}/a" in self.ranges:
                params[f"{s.name}/a"] = s.act_bits.index(lp.act_bits)
            if f"{s.name}/nm" in self.ranges:
                params[f"{s.name}/nm"] = s.nm_patterns.index(lp.nm)
            groups = self._group_indices(s, lp)
            by_spread.setdefault(self._spread_key.get(s.name, ""), []).append((s, groups))
        for key, layers in by_spread.items():
            candidates = range(MAX_SPREAD + 1) if key else (0,)
            fits = [(sum(self._fit(s, g, sp)[1] for s, g in layers), sp) for sp in candidates]
            spread = min(fits)[1]
            if key:
                params[key] = spread
            for s, g in layers:
                if f"{s.name}/w" in self.ranges:
                    params[f"{s.name}/w"] = self._fit(s, g, spread)[0]
        return params

    @staticmethod
    def _fit(s: LayerSpace, groups: list[int | None], spread: int) -> tuple[int, int]:
        """``(w, distance)``: the layer width whose spread decoding is nearest to ``groups``."""
        top = len(s.nonzero_bits) - 1
        offsets = spread_offsets(spread, s.n_groups)
        best = (0, 10**9)
        for w in range(top + 1):
            d = sum(abs(min(max(w + o, 0), top) - g) for o, g in zip(offsets, groups, strict=True) if g is not None)
            if d < best[1]:
                best = (w, d)
        return best

    @staticmethod
    def _group_indices(s: LayerSpace, lp: LayerPolicy) -> list[int | None]:
        """Width index of each channel group (most important first); ``None`` if fully pruned."""
        out: list[int | None] = []
        for members in s.channel_groups:
            kept = sorted(lp.weight_bits[c] for c in members if lp.weight_bits[c] != 0)
            out.append(s.nonzero_bits.index(kept[len(kept) // 2]) if kept else None)
        return out
