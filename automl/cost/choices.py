"""The exact cost of every layer decision, for the integer program (:mod:`automl.problem.ilp`).

A layer decision is (level of the layer's output group, level of its input group, uniform
weight bits, activation bits). A layer's size, MACs, BitOps, input activation bits and
latency terms depend on nothing else, so they are priced here with the cost model's own
vectorised formulas (:meth:`CostModel.layer_batch`): one batch per layer whose rows
enumerate its decisions, every other layer unpruned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from automl.cost.batch import LayerBatch
from automl.cost.model import CostModel
from search_spaces.space import LayerSpace, SearchSpace

Objective = Callable[[int, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class LayerChoices:
    """The surviving decisions of one layer (arrays of length ``k``)."""

    name: str
    g_out: int
    g_in: int | None  # the one prunable input group with several levels (== g_out if depthwise)
    lo: np.ndarray
    li: np.ndarray
    wb: np.ndarray
    ab: np.ndarray
    sens: np.ndarray
    cost: dict[str, np.ndarray]
    col0: int = 0

    @property
    def k(self) -> int:
        return int(self.lo.size)


@dataclass
class ChoiceTable:
    """Decisions of every layer plus the group levels that tie them together."""

    layers: list[LayerChoices]
    group_levels: dict[int, tuple[float, ...]]
    kept: dict[tuple[int, float], int]
    out_elem_per_channel: np.ndarray
    follower_bytes: dict[tuple[int, float], float]
    y_index: dict[tuple[int, float], int] = field(default_factory=dict)

    @property
    def n_x(self) -> int:
        return sum(c.k for c in self.layers)

    def out_elems(self, layer: int, level: float) -> float:
        """Output elements of ``layer`` when its group is pruned at ``level``."""
        return self.kept[self.layers[layer].g_out, float(level)] * float(self.out_elem_per_channel[layer])


def _mask(s: LayerSpace, level: float) -> np.ndarray:
    keep = np.ones(s.out_channels, dtype=bool)
    n = int(round(level * s.out_channels))
    if n:
        keep[list(s.channel_rank[s.out_channels - n :])] = False
    return keep


def _group_levels(space: SearchSpace, cost_model: CostModel) -> tuple[dict[int, tuple[float, ...]], dict[int, list[int]]]:
    producers: dict[int, list[int]] = {}
    for li, s in enumerate(space.layers):
        producers.setdefault(s.coupled_group, []).append(li)
    levels = {}
    for gid, members in producers.items():
        common = None
        for li in members:
            s = space.layers[li]
            ok = {lv for lv in s.sparsity_levels if int(round(lv * s.out_channels)) <= s.max_pruned}
            common = ok if common is None else common & ok
        levels[gid] = tuple(sorted(common or {0.0}))
    return levels, producers


def _input_group(cost_model: CostModel, li: int, levels: dict[int, tuple[float, ...]]) -> int | None:
    layer = cost_model.analysis.layers[li]
    groups = {seg.group for seg in layer.in_segments if len(levels.get(seg.group, ())) > 1}
    return groups.pop() if len(groups) == 1 else None


def _dominated(block: np.ndarray) -> np.ndarray:
    """Rows of ``block`` (``[k, d]``) that another row matches or beats in every column."""
    le = (block[:, None, :] <= block[None, :, :]).all(axis=2)
    lt = (block[:, None, :] < block[None, :, :]).any(axis=2)
    k = block.shape[0]
    earlier = np.tri(k, k, -1, dtype=bool).T  # earlier[i, j]: i < j
    beats = le & (lt | earlier)
    np.fill_diagonal(beats, False)
    return beats.any(axis=0)


def build_choices(
    space: SearchSpace, cost_model: CostModel, metrics: Sequence[str], objective: Objective
) -> ChoiceTable:
    """Price every decision of every layer and drop the dominated ones.

    Args:
        space: the search space.
        cost_model: prices the decisions.
        metrics: the constrained metrics; a decision is dropped when another one of the same
            layer and levels is no worse on the objective and on every cost these metrics see.
        objective: ``objective(layer index, out levels, weight bits, act bits) -> values``.
    """
    levels, producers = _group_levels(space, cost_model)
    masks = {(li, lv): _mask(s, lv) for li, s in enumerate(space.layers) for lv in levels[s.coupled_group]}
    kept = {}
    for gid, members in producers.items():
        for lv in levels[gid]:
            kept[gid, lv] = int(np.logical_and.reduce([masks[m, lv] for m in members]).sum())
    gidx = {g: i for i, g in enumerate(cost_model.group_ids)}
    follower = {
        (gid, lv): n * cost_model.follower_bytes[gidx[gid]] for (gid, lv), n in kept.items()
    }
    table = ChoiceTable([], levels, kept, cost_model.out_elem_per_channel, follower)
    for li in range(len(space.layers)):
        table.layers.append(_layer_choices(space, cost_model, li, levels, producers, masks, metrics, objective))
    col = 0
    for c in table.layers:
        c.col0 = col
        col += c.k
    for gid, lvs in levels.items():
        if len(lvs) > 1:
            for lv in lvs:
                table.y_index[gid, lv] = col
                col += 1
    return table


def _layer_choices(
    space: SearchSpace, cm: CostModel, li: int, levels: dict[int, tuple[float, ...]],
    producers: dict[int, list[int]], masks: dict[tuple[int, float], np.ndarray], metrics: Sequence[str],
    objective: Objective,
) -> LayerChoices:
    s = space.layers[li]
    g_out = s.coupled_group
    g_in = _input_group(cm, li, levels)
    lo_set = np.array(levels[g_out])
    li_set = np.array(levels[g_in]) if g_in is not None and g_in != g_out else np.array([np.nan])
    grid = np.meshgrid(lo_set, li_set, np.array(s.nonzero_bits), np.array(s.act_bits), indexing="ij")
    lo, lin, wb, ab = (a.ravel() for a in grid)
    wb, ab = wb.astype(np.int64), ab.astype(np.int64)
    if g_in == g_out:
        lin = lo.copy()
    batch = _decision_batch(space, cm, li, (g_in, g_out), (lin, lo), wb, ab, levels, producers, masks)
    cost = {
        "size": cm.layer_size_bits(batch)[:, li] / 8.0,
        "macs": batch.macs[:, li],
        "bitops": (batch.out_spatial * batch.weights_per_out * batch.channel_sum(np.arange(33.0)) * batch.act_bits)[:, li],
        "in_bits": batch.in_elems[:, li] * ab,
    }
    for p in cm.profiles:
        compute, memory, overhead = p.layer_terms(batch)
        cost[f"{p.name}:compute"], cost[f"{p.name}:memory"], cost[f"{p.name}:overhead"] = (
            compute[:, li], memory[:, li], overhead[:, li]
        )
    sens = np.asarray(objective(li, lo, wb, ab), dtype=float)
    keep = _survivors(lo, lin, sens, ab, cost, metrics, cm)
    return LayerChoices(
        s.name, g_out, g_in, lo[keep], np.nan_to_num(lin[keep]), wb[keep], ab[keep], sens[keep],
        {k: v[keep] for k, v in cost.items()},
    )


def _decision_batch(
    space: SearchSpace, cm: CostModel, li: int, groups: tuple[int | None, int], rows: tuple[np.ndarray, np.ndarray],
    wb: np.ndarray, ab: np.ndarray, levels: dict[int, tuple[float, ...]], producers: dict[int, list[int]],
    masks: dict[tuple[int, float], np.ndarray],
) -> LayerBatch:
    """The cost model's batch of layer ``li``'s decisions (rows of ``wb``, ``ab`` and the group levels in ``rows``).

    Only column ``li`` is read. The pruning structure (kept inputs and outputs of every layer)
    depends on the two group levels alone, so the cost model decodes each distinct pair once
    (a few dozen rows instead of one per decision, each as wide as the whole network) and the
    decisions index into it; their bits and activation bits enter column ``li`` only: its
    bit histogram (its kept channels at ``wb``) and its activation bits.
    """
    pairs, inverse = np.unique(np.stack([np.nan_to_num(rows[0], nan=-1.0), rows[1]], axis=1), axis=0,
                               return_inverse=True)
    inverse = inverse.ravel()
    k = len(pairs)
    bits = np.empty((k, cm.n_channels), dtype=np.int64)
    for m, sm in enumerate(space.layers):
        bits[:, cm.offsets[m] : cm.offsets[m] + sm.out_channels] = sm.nonzero_bits[-1]
    for gid, lv_of_row in ((groups[0], pairs[:, 0]), (groups[1], pairs[:, 1])):
        if gid is None:
            continue
        for m in producers[gid]:
            stack = np.stack([masks[m, lv] for lv in levels[gid]])
            kept = stack[np.searchsorted(np.array(levels[gid]), lv_of_row)]
            sl = slice(cm.offsets[m], cm.offsets[m] + space.layers[m].out_channels)
            bits[:, sl] = np.where(kept, bits[:, sl], 0)
    act = np.tile(np.array([sm.act_bits[-1] for sm in space.layers], dtype=np.int64), (k, 1))
    base = cm.layer_batch(bits, act)
    n = len(wb)
    fields = {f: getattr(base, f)[inverse] for f in ("act_bits", "out_bits", "kept_in", "kept_out", "weights_per_out",
                                                      "in_elems", "out_elems", "group_kept")}
    fields["act_bits"][:, li] = ab
    batch = LayerBatch(names=base.names, eff_bits=np.empty((n, 0), dtype=np.int64), offsets=base.offsets,
                       in_total=base.in_total, out_total=base.out_total, out_spatial=base.out_spatial,
                       hist_base=base.hist_base, **fields)
    hist = base.bit_histogram[inverse]
    kept_li = fields["kept_out"][:, li]
    hist[:, li, :] = 0.0
    hist[np.arange(n), li, wb] = kept_li
    hist[:, li, 0] += space.layers[li].out_channels - kept_li
    batch.__dict__["bit_histogram"] = hist  # the cached property, from the decisions rather than eff_bits
    return batch


def _survivors(
    lo: np.ndarray, lin: np.ndarray, sens: np.ndarray, ab: np.ndarray, cost: dict[str, np.ndarray],
    metrics: Sequence[str], cm: CostModel,
) -> np.ndarray:
    cols = [sens]
    for m in metrics:
        if m in ("size", "macs", "bitops"):
            cols.append(cost[m])
        elif m == "peak_act":
            cols += [cost["in_bits"], ab.astype(float)]
        elif m.startswith("latency@"):
            name = m.split("@", 1)[1]
            cols += [cost[f"{name}:compute"] + cost[f"{name}:overhead"], cost[f"{name}:memory"] + cost[f"{name}:overhead"], ab.astype(float)]
    values = np.stack(cols, axis=1)
    keep = np.ones(lo.size, dtype=bool)
    blocks: dict[tuple[float, float], list[int]] = {}
    for i, key in enumerate(zip(lo.tolist(), np.nan_to_num(lin, nan=-1.0).tolist(), strict=True)):
        blocks.setdefault(key, []).append(i)
    for idx in blocks.values():
        rows = np.array(idx)
        keep[rows[_dominated(values[rows])]] = False
    return keep
