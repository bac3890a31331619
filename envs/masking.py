"""Exact feasibility masks and projection onto the feasible set.

Every cost is monotone: fewer bits or more pruning never cost more. So a choice can still
be completed into a policy that meets the budget exactly when "the decided layers + this
choice + every undecided part at its cheapest valid completion" meets it. :class:`Pricer`
keeps that committed state as channel-bit arrays and prices all candidates of a step in one
vectorised ``CostModel`` call, swapping in the current layer's block.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from envs.choices import SPARSITY, Decision, LayerChoices, cost_order, fixed_positions

PRODUCT_LIMIT = 64  # decisions with at most this many joint options are enumerated exactly
TOLERANCE = 1e-9


class Pricer:
    """The committed state of an episode, priced with one layer's block swapped for candidates.

    Args:
        cost_model: a :class:`~automl.cost.CostModel` (``price_arrays`` or ``price_batch``).
        limits: ``(metric, absolute limit)`` of every active constraint.
        choices: the layers' options in space order.
    """

    def __init__(self, cost_model: object, limits: Sequence[tuple[str, float]], choices: Sequence[LayerChoices]) -> None:
        self.cost_model = cost_model
        self.metrics = tuple(m for m, _ in limits)
        self.limits = np.array([float(v) for _, v in limits])
        self.choices = tuple(choices)
        sizes = [c.channels for c in self.choices]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.bits = np.zeros(int(self.offsets[-1]), dtype=np.int64)
        self.act = np.zeros(len(self.choices), dtype=np.int64)
        self._arrays = getattr(cost_model, "price_arrays", None)

    @property
    def constrained(self) -> bool:
        return bool(self.metrics)

    def set_row(self, layer: int, row: np.ndarray) -> None:
        bits, act = self.choices[layer].row_bits(row)
        self.bits[self.offsets[layer] : self.offsets[layer + 1]] = bits
        self.act[layer] = act

    def _table(self, bits: np.ndarray, act: np.ndarray) -> Mapping[str, np.ndarray]:
        if self._arrays is not None:
            return self._arrays(bits, act)
        blocks = [bits[:, a:b] for a, b in itertools.pairwise(self.offsets)]
        return self.cost_model.price_batch(blocks, act)  # type: ignore[attr-defined]

    def ratios(self, bits: np.ndarray, act: np.ndarray) -> np.ndarray:
        """``[n, K]`` cost / limit of full states (``bits [n, C]``, ``act [n, L]``)."""
        if not self.constrained:
            return np.zeros((bits.shape[0], 0))
        table = self._table(bits, act)
        return np.stack([np.asarray(table[m], dtype=float) for m in self.metrics], axis=1) / self.limits

    def ratios_with(self, layer: int, rows: np.ndarray) -> np.ndarray:
        """``[n, K]`` cost / limit of the committed state with ``layer`` set to each of ``rows``."""
        c = self.choices[layer]
        if len(rows) == 1:
            bits, act = c.row_bits(rows[0])
            return self.ratios_with_block(layer, bits[None, :], np.array([act]))
        return self.ratios_with_block(layer, c.channel_bits(rows), c.act(rows))

    def ratios_with_block(self, layer: int, block: np.ndarray, act: np.ndarray) -> np.ndarray:
        n = block.shape[0]
        if not self.constrained:
            return np.zeros((n, 0))
        bits = np.repeat(self.bits[None, :], n, axis=0)
        bits[:, self.offsets[layer] : self.offsets[layer + 1]] = block
        acts = np.repeat(self.act[None, :], n, axis=0)
        acts[:, layer] = act
        return self.ratios(bits, acts)


def feasible(ratios: np.ndarray) -> np.ndarray:
    """``[n]`` whether every cost / limit ratio is within the limit (the budget's tolerance)."""
    return (ratios <= 1.0 + TOLERANCE).all(axis=1)


def violation(ratios: np.ndarray) -> np.ndarray:
    """``[n]`` summed relative excess over the limits (0 when feasible)."""
    return np.clip(ratios - 1.0, 0.0, None).sum(axis=1)


@dataclass(frozen=True, eq=False)
class CandidateTable:
    """The distinct rows a decision's masks need, and which option maps to which row.

    Attributes:
        rows: ``[u, G + 2]`` distinct valid rows (each the cheapest valid completion of its
            option or option combination).
        index: per component, ``[n_k]`` the row of each option; -1 when the option has no
            valid completion.
        product: ``[*sizes]`` the row of each option combination, or ``None`` when the
            decision has more than :data:`PRODUCT_LIMIT` combinations.
        dearest: the decision's every component at its most expensive option.
        bits / act: channel bits ``[u, C]`` and activation bits ``[u]`` of ``rows``.
    """

    rows: np.ndarray
    index: tuple[np.ndarray, ...]
    product: np.ndarray | None
    dearest: np.ndarray
    bits: np.ndarray
    act: np.ndarray


def _options_fixed(decision: Decision, options: Sequence[int], choices: LayerChoices) -> dict[int, int]:
    fixed: dict[int, int] = {}
    for comp, opt in zip(decision.components, options, strict=True):
        fixed.update(fixed_positions(comp, int(opt), choices))
    return fixed


def compose(
    choices: LayerChoices, decision: Decision, fixed: Mapping[int, int], options: Sequence[int]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The row of ``options`` completed on top of ``fixed``, made valid if it prunes too much.

    Zero-bit group options are raised to the lowest non-zero width, most important group
    first, until the row is valid. Returns the row and the options it really holds.
    """
    opts = [int(o) for o in options]
    groups = [k for k, comp in enumerate(decision.components) if comp.kind == "group"]
    while True:
        row = choices.complete({**fixed, **_options_fixed(decision, opts, choices)})
        if row is not None:
            return row, tuple(opts)
        zero = [k for k in groups if choices.weight_bits[opts[k]] == 0]
        assert zero, "a row without zero-bit groups is always valid"
        opts[zero[0]] = choices.nonzero


def build_table(choices: LayerChoices, decision: Decision, fixed: Mapping[int, int]) -> CandidateTable:
    """Enumerate the rows whose prices decide the masks of ``decision`` on top of ``fixed``."""
    rows: list[np.ndarray] = []
    seen: dict[bytes, int] = {}

    def row_id(extra: Mapping[int, int]) -> int:
        row = choices.complete({**fixed, **extra})
        if row is None:
            return -1
        key = row.tobytes()
        if key not in seen:
            seen[key] = len(rows)
            rows.append(row)
        return seen[key]

    sizes = decision.sizes
    product = None
    if math.prod(sizes) <= PRODUCT_LIMIT:  # Python ints: 8**64 must not overflow
        flat = [row_id(_options_fixed(decision, combo, choices)) for combo in itertools.product(*map(range, sizes))]
        product = np.array(flat, dtype=np.int64).reshape(sizes)
    index = []
    for comp in decision.components:
        ids = np.array([row_id(fixed_positions(comp, o, choices)) for o in range(comp.n)], dtype=np.int64)
        index.append(ids)
    dear = [int(cost_order(comp)[-1]) for comp in decision.components]
    dearest = choices.complete({**fixed, **_options_fixed(decision, dear, choices)})
    assert dearest is not None, "the most expensive options prune nothing beyond the fixed part"
    table = np.array(rows, dtype=np.int64).reshape(-1, choices.width)
    return CandidateTable(table, tuple(index), product, dearest, choices.channel_bits(table), choices.act(table))


def component_masks(table: CandidateTable, row_ok: np.ndarray) -> list[np.ndarray]:
    """Per component, which options have a feasible completion (``row_ok`` per table row)."""
    if table.product is not None:
        ok = np.where(table.product >= 0, row_ok[np.maximum(table.product, 0)], False)
        axes = range(ok.ndim)
        return [ok.any(axis=tuple(a for a in axes if a != k)) for k in axes]
    return [np.where(ids >= 0, row_ok[np.maximum(ids, 0)], False) for ids in table.index]


def product_mask(table: CandidateTable, row_ok: np.ndarray) -> np.ndarray | None:
    """``[*sizes]`` which option combinations are feasible, when the decision is enumerated."""
    if table.product is None:
        return None
    return np.where(table.product >= 0, row_ok[np.maximum(table.product, 0)], False)


def _rank(choices: LayerChoices, row: np.ndarray) -> np.ndarray:
    """Cost rank of every row position (0 = cheapest option of that position)."""
    rank = row.copy()
    rank[0] = len(choices.levels) - 1 - row[0]
    return rank


def _unrank(choices: LayerChoices, rank: np.ndarray) -> np.ndarray:
    row = rank.copy()
    row[..., 0] = len(choices.levels) - 1 - rank[..., 0]
    return row


def projection_path(choices: LayerChoices, request: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Rows from ``base`` (the cheapest completion) toward ``request``, every position in step.

    Positions where the request is dearer than the base move from the base's option toward
    the request's in proportion; the others stay at the base's. Costs rise along the path,
    so its feasible rows are a prefix and the last one is the feasible point nearest the
    request on this line.
    """
    rb, rr = _rank(choices, base), _rank(choices, request)
    span = np.maximum(rr - rb, 0)
    steps = max(int(span.max()), 1)
    tau = np.arange(steps + 1)[:, None] / steps
    ranks = rb[None, :] + np.floor(tau * span[None, :] + 0.5).astype(np.int64)
    return _unrank(choices, ranks)


def project(
    pricer: Pricer,
    layer: int,
    decision: Decision,
    fixed: Mapping[int, int],
    options: Sequence[int],
    check_request: bool = False,
) -> tuple[np.ndarray, tuple[int, ...], np.ndarray, bool]:
    """The feasible options nearest to a request: ``(row, options, cost ratios, moved)``.

    Walks :func:`projection_path` from the committed completion (feasible by induction) to
    the request, keeps the last feasible point, then lowers every position to the request's
    option where the request is cheaper (never dearer, hence still feasible). With
    ``check_request`` the request is priced in the same call and returned unmoved when it
    is feasible (one call instead of two when requests are often infeasible).
    """
    choices = pricer.choices[layer]
    request, options = compose(choices, decision, fixed, options)
    base = choices.complete(dict(fixed))
    assert base is not None
    path = projection_path(choices, request, base)
    if check_request:
        both = pricer.ratios_with(layer, np.concatenate([request[None, :], path]))
        if feasible(both[:1])[0]:
            return request, tuple(options), both[0], False
        path_ratios = both[1:]
    else:
        path_ratios = pricer.ratios_with(layer, path)
    ok = feasible(path_ratios)
    last = int(np.argmin(ok)) - 1 if not ok.all() else len(ok) - 1
    best = path[max(last, 0)]
    lowered = np.where(_rank(choices, request) < _rank(choices, best), request, best)
    for point in (lowered, best):
        row, opts = compose(choices, decision, fixed, _decision_options(decision, point, choices))
        hit = np.flatnonzero((path == row).all(axis=1))
        ratios = path_ratios[hit[:1]] if hit.size else pricer.ratios_with(layer, row[None, :])
        if feasible(ratios)[0]:
            return row, opts, ratios[0], True
    base_opts = _decision_options(decision, base, choices)
    return base, base_opts, pricer.ratios_with(layer, base[None, :])[0], True


def _decision_options(decision: Decision, row: np.ndarray, choices: LayerChoices) -> tuple[int, ...]:
    """The option of each component of ``decision`` that ``row`` holds."""
    out = []
    for comp in decision.components:
        if comp.kind == SPARSITY:
            out.append(int(row[0]))
        elif comp.kind == "group":
            out.append(int(row[1 + comp.group]))
        elif comp.kind == "uniform":
            out.append(int(row[1:1 + choices.n_groups].max()) - choices.nonzero)
        else:
            out.append(int(row[-1]))
    return tuple(out)
