"""The decisions an env asks for, and how a layer's decisions become channel bit-widths.

A layer's choice is a *row* of option indices ``[sparsity, group_0 .. group_{G-1}, act]``
into :class:`LayerChoices`' option lists. :meth:`LayerChoices.channel_bits` turns many rows
into per-channel bits at once for pricing; it is the vectorised twin of
:meth:`SearchSpace.decode` (the single mapping the final policy is built with), and the
tests hold the two equal. Undecided parts of a row are filled by :meth:`LayerChoices.complete`,
the layer's *cheapest valid completion*, which the feasibility masks rely on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from search_spaces.policy import LayerPolicy
from search_spaces.space import LayerSpace, SearchSpace

SPARSITY, GROUP, UNIFORM, ACT = "sparsity", "group", "uniform", "act"
MEMO_LIMIT = 50_000  # memoised completions per layer; cleared when full


@dataclass(frozen=True)
class Component:
    """One dimension of an action: which part of a layer's row it sets.

    Attributes:
        kind: ``sparsity`` (the layer-level pruning level), ``group`` (the bits of one
            importance-ranked channel group), ``uniform`` (the bits of every group at
            once, HAQ-style) or ``act`` (activation bits).
        n: number of options.
        group: the group index of a ``group`` component.
    """

    kind: str
    n: int
    group: int = -1


@dataclass(frozen=True)
class Decision:
    """One env step: the components of one layer decided together.

    Attributes:
        layer: index of the layer in space order.
        phase: 0 for a layer-level (or whole-layer) step, 1 for a channel-level step.
        components: what each action dimension sets, in action order.
    """

    layer: int
    phase: int
    components: tuple[Component, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(c.n for c in self.components)


class LayerChoices:
    """The options of one layer under an env's grammar, and their decoding.

    Args:
        space: the layer's :class:`LayerSpace`.
        weight_bits: the weight bit-widths the env offers (a subset of the space's,
            ascending; no 0 for an env that does not prune).
        levels: the sparsity levels the env offers (ascending); levels that would prune
            more than the layer's ``max_sparsity`` are dropped.
    """

    def __init__(self, space: LayerSpace, weight_bits: Sequence[int], levels: Sequence[float]) -> None:
        c = space.out_channels
        self.space = space
        self.name = space.name
        self.channels = c
        self.n_groups = space.n_groups
        self.max_pruned = space.max_pruned
        self.weight_bits = np.array(sorted(weight_bits), dtype=np.int64)
        self.act_bits = np.array(space.act_bits, dtype=np.int64)
        kept = [lv for lv in sorted(levels) if int(round(lv * c)) <= self.max_pruned]
        self.levels = tuple(kept or [min(levels)])
        self.n_pruned = np.array([int(round(lv * c)) for lv in self.levels], dtype=np.int64)
        self.nonzero = int(np.searchsorted(self.weight_bits, 1))  # index of the lowest non-zero width
        self.group_of = np.empty(c, dtype=np.int64)
        for g, members in enumerate(space.channel_groups):
            self.group_of[list(members)] = g
        self.rank_pos = np.empty(c, dtype=np.int64)
        self.rank_pos[list(space.channel_rank)] = np.arange(c)
        # Channels of each group, as rank positions: group zeros count against max_pruned.
        self._group_ranks = [self.rank_pos[list(m)] for m in space.channel_groups]
        self.width = self.n_groups + 2
        self._single: dict[bytes, tuple[np.ndarray, int]] = {}
        self._policies: dict[bytes, LayerPolicy] = {}
        self._completions: dict[tuple[tuple[int, int], ...], np.ndarray | None] = {}

    # decoding ------------------------------------------------------------------------
    def channel_bits(self, rows: np.ndarray) -> np.ndarray:
        """``[n, C]`` channel bits of ``rows`` (``[n, G + 2]`` option indices)."""
        rows = np.atleast_2d(rows)
        bits = self.weight_bits[rows[:, 1 : 1 + self.n_groups]][:, self.group_of]
        keep = self.rank_pos[None, :] < (self.channels - self.n_pruned[rows[:, 0]])[:, None]
        return bits * keep

    def row_bits(self, row: np.ndarray) -> tuple[np.ndarray, int]:
        """Channel bits and activation bits of one row (memoised: episodes revisit rows)."""
        key = row.tobytes()
        hit = self._single.get(key)
        if hit is None:
            hit = self._single[key] = (self.channel_bits(row)[0], int(self.act(row)[0]))
        return hit

    def act(self, rows: np.ndarray) -> np.ndarray:
        """``[n]`` activation bits of ``rows``."""
        return self.act_bits[np.atleast_2d(rows)[:, -1]]

    def valid(self, rows: np.ndarray) -> np.ndarray:
        """``[n]`` whether each row prunes at most ``max_pruned`` channels."""
        return (self.channel_bits(rows) == 0).sum(axis=1) <= self.max_pruned

    def layer_policy(self, row: Sequence[int], space: SearchSpace) -> LayerPolicy:
        """The row decoded by :meth:`SearchSpace.decode` (the project's single mapping)."""
        key = row.tobytes()
        lp = self._policies.get(key)
        if lp is None:
            groups = [int(self.weight_bits[i]) for i in row[1 : 1 + self.n_groups]]
            lp = space.decode(self.name, self.levels[row[0]], groups, int(self.act_bits[row[-1]]))
            self._policies[key] = lp
        return lp

    # completion ----------------------------------------------------------------------
    def _level_for(self, zero: np.ndarray) -> int | None:
        """The highest level valid together with the pruned rank positions ``zero``."""
        head_zeros = np.concatenate([[0], np.cumsum(zero)])[self.channels - self.n_pruned]
        ok = np.flatnonzero(self.n_pruned + head_zeros <= self.max_pruned)
        return int(ok[-1]) if ok.size else None

    def complete(self, fixed: Mapping[int, int]) -> np.ndarray | None:
        """The cheapest valid row agreeing with ``fixed`` (row position -> option index).

        Unfixed activation bits take the lowest width; an unfixed sparsity takes the highest
        level that stays valid with the fixed zero groups; unfixed groups, from the least to
        the most important, take 0 bits while the pruning stays within ``max_pruned`` and the
        lowest non-zero width otherwise. ``None`` if ``fixed`` itself prunes too much.

        Costs are monotone in bits and kept channels, so no valid completion of ``fixed``
        costs less than this one up to which channels a coupled group loses (the count is
        maximal, and the least important channels go first).
        """
        key = tuple(sorted(fixed.items()))
        if key not in self._completions:
            if len(self._completions) >= MEMO_LIMIT:
                self._completions.clear()
            self._completions[key] = self._complete(fixed)
        row = self._completions[key]
        return None if row is None else row.copy()

    def _complete(self, fixed: Mapping[int, int]) -> np.ndarray | None:
        g_n = self.n_groups
        row = np.empty(self.width, dtype=np.int64)
        row[-1] = fixed.get(g_n + 1, 0)
        pruned = np.zeros(self.channels, dtype=bool)  # by rank position
        for g in range(g_n):
            if 1 + g in fixed and self.weight_bits[fixed[1 + g]] == 0:
                pruned[self._group_ranks[g]] = True
        level = fixed[0] if 0 in fixed else self._level_for(pruned)
        if level is None:
            return None
        pruned[self.channels - int(self.n_pruned[level]) :] = True
        count = int(pruned.sum())
        if count > self.max_pruned:
            return None
        row[0] = level
        for g in reversed(range(g_n)):
            if 1 + g in fixed:
                row[1 + g] = fixed[1 + g]
                continue
            extra = int((~pruned[self._group_ranks[g]]).sum())
            if self.nonzero > 0 and count + extra <= self.max_pruned:
                row[1 + g] = 0
                pruned[self._group_ranks[g]] = True
                count += extra
            else:
                row[1 + g] = self.nonzero
        return row

    def dearest(self) -> np.ndarray:
        """The most expensive row: lowest sparsity, widest weights and activations."""
        row = np.full(self.width, len(self.weight_bits) - 1, dtype=np.int64)
        row[0] = 0
        row[-1] = len(self.act_bits) - 1
        return row

    def row_of(self, lp: LayerPolicy) -> np.ndarray:
        """The row nearest to ``lp``: the level of its pruned count, each group's median kept
        width (nearest offered non-zero width), its activation bits (nearest offered).

        A fully pruned group takes the median kept width of the whole layer (the lowest
        non-zero width if the layer keeps nothing): its bits cost nothing while pruned, and
        they are what its channels come back with when an agent lowers the sparsity from
        here, so they should be the layer's own precision, not an outlier (the widest width
        would make every step back from a pruned policy look unaffordable).
        """
        bits = np.asarray(lp.weight_bits)
        row = np.empty(self.width, dtype=np.int64)
        row[0] = int(np.argmin(np.abs(self.n_pruned - int((bits == 0).sum()))))
        widths = self.weight_bits[self.nonzero :]
        layer_kept = bits[bits > 0]
        fallback = float(np.median(layer_kept)) if layer_kept.size else float(widths[0])
        for g, members in enumerate(self.space.channel_groups):
            kept = bits[list(members)]
            kept = kept[kept > 0]
            target = float(np.median(kept)) if kept.size else fallback
            row[1 + g] = self.nonzero + int(np.argmin(np.abs(widths - target)))
        row[-1] = int(np.argmin(np.abs(self.act_bits - lp.act_bits)))
        return self.make_valid(row)

    def make_valid(self, row: np.ndarray, order: Sequence[int] | None = None) -> np.ndarray:
        """``row`` with zero groups raised to the lowest non-zero width until it is valid.

        Groups are raised from the most important on; a row without zero groups is valid
        (every offered level is), so this always ends.
        """
        row = row.copy()
        for g in order if order is not None else range(self.n_groups):
            if self.valid(row)[0]:
                break
            if self.weight_bits[row[1 + g]] == 0:
                row[1 + g] = self.nonzero
        return row


def apply_option(row: np.ndarray, component: Component, option: int, choices: LayerChoices) -> None:
    """Write ``option`` of ``component`` into ``row`` (in place)."""
    if component.kind == SPARSITY:
        row[0] = option
    elif component.kind == GROUP:
        row[1 + component.group] = option
    elif component.kind == UNIFORM:
        row[1 : 1 + choices.n_groups] = choices.nonzero + option
    else:
        row[-1] = option


def fixed_positions(component: Component, option: int, choices: LayerChoices) -> dict[int, int]:
    """The row positions (and option indices) that ``option`` of ``component`` fixes."""
    if component.kind == SPARSITY:
        return {0: option}
    if component.kind == GROUP:
        return {1 + component.group: option}
    if component.kind == UNIFORM:
        return {1 + g: choices.nonzero + option for g in range(choices.n_groups)}
    return {choices.n_groups + 1: option}


def component_option(row: np.ndarray, component: Component, choices: LayerChoices) -> int:
    """The option of ``component`` that ``row`` holds (inverse of :func:`apply_option`; a
    ``uniform`` component reads the median group)."""
    if component.kind == SPARSITY:
        return int(row[0])
    if component.kind == GROUP:
        return int(row[1 + component.group])
    if component.kind == UNIFORM:
        groups = np.sort(row[1 : 1 + choices.n_groups])
        return int(groups[len(groups) // 2]) - choices.nonzero
    return int(row[-1])


def cost_order(component: Component) -> np.ndarray:
    """Option indices from the cheapest to the most expensive (more sparsity is cheaper)."""
    order = np.arange(component.n)
    return order[::-1] if component.kind == SPARSITY else order
