"""Budget handling during an episode: which options stay feasible, and what a step applies.

:class:`BudgetGuard` owns the episode's committed state (through its :class:`Pricer`) and
answers two questions with as few ``CostModel`` calls as possible, since pricing is what
an env step spends its time on:

- :meth:`BudgetGuard.resolve`: the row a requested action becomes (made valid, and in
  ``mask`` mode projected onto the feasible set) and its cost ratios (the next observation).
- :meth:`BudgetGuard.masks`: the current decision's candidate rows and which are feasible.

Two monotonicity shortcuts keep most masks cheap: if the decision's dearest option is
feasible (the rest at its cheapest) every option is; if every undecided part at its dearest
is feasible, nothing later can break the budget and the episode runs unchecked. Once an
agent asks for masks, ``resolve`` prices the next decision's two shortcut states in the same
call as the applied row, so a masked step usually costs one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from envs.choices import Decision, LayerChoices, fixed_positions
from envs.masking import CandidateTable, Pricer, build_table, compose, feasible, project

COMPOSE_CACHE = 100_000  # memoised (step, fixed, request) -> row; cleared when full


class BudgetGuard:
    """Masks and projection for one env (see the module docstring).

    Args:
        pricer: the committed state and its pricing.
        decisions: the env's decisions in episode order.
        enforce: whether the budget is enforced during the episode (``mask`` mode); when
            ``False`` only the search space's own rules (no over-pruning) are kept.
    """

    def __init__(self, pricer: Pricer, decisions: Sequence[Decision], enforce: bool) -> None:
        self.pricer = pricer
        self.choices: tuple[LayerChoices, ...] = pricer.choices
        self.decisions = tuple(decisions)
        self.enforce = enforce and pricer.constrained
        dear = [c.dearest() for c in self.choices]
        self._dear_bits = np.concatenate([c.channel_bits(r)[0] for c, r in zip(self.choices, dear, strict=True)])
        self._dear_act = np.array([c.act(r)[0] for c, r in zip(self.choices, dear, strict=True)])
        self._tables: dict[tuple[Any, ...], CandidateTable] = {}
        self._composed: dict[tuple[Any, ...], tuple[np.ndarray, tuple[int, ...]]] = {}
        self.wants_masks = False
        self.reset()

    def reset(self) -> None:
        self.unconstrained = not self.enforce
        self._mask: tuple[int, np.ndarray] | None = None
        self._shortcut: tuple[int, np.ndarray] | None = None  # (step, ok of the two shortcut states)
        self._tight = False  # whether the last request had to be projected

    # tables ------------------------------------------------------------------------
    def table(self, t: int, fixed: dict[int, int]) -> CandidateTable:
        key = (t, tuple(sorted(fixed.items())))
        table = self._tables.get(key)
        if table is None:
            d = self.decisions[t]
            table = self._tables[key] = build_table(self.choices[d.layer], d, fixed)
        return table

    def _compose(self, t: int, fixed: dict[int, int], requested: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
        key = (t, tuple(fixed.items()), requested)
        hit = self._composed.get(key)
        if hit is None:
            if len(self._composed) >= COMPOSE_CACHE:
                self._composed.clear()
            d = self.decisions[t]
            hit = self._composed[key] = compose(self.choices[d.layer], d, fixed, requested)
        return hit

    # shortcut states -----------------------------------------------------------------
    def _shortcut_states(
        self, t: int, fixed: dict[int, int], bits: np.ndarray, act: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """From committed state ``(bits, act)``: decision ``t`` at its dearest (rest cheapest),
        and every undecided part at its dearest."""
        d = self.decisions[t]
        layer, c = d.layer, self.choices[d.layer]
        lo, hi = self.pricer.offsets[layer], self.pricer.offsets[layer + 1]
        dear_row = c.dearest()
        for pos, opt in fixed.items():
            dear_row[pos] = opt
        out_bits = np.repeat(bits[None, :], 2, axis=0)
        out_act = np.repeat(act[None, :], 2, axis=0)
        out_bits[0, lo:hi], out_act[0, layer] = c.row_bits(self.table(t, fixed).dearest)
        out_bits[1, lo:hi], out_act[1, layer] = c.row_bits(dear_row)
        out_bits[1, hi:], out_act[1, layer + 1 :] = self._dear_bits[hi:], self._dear_act[layer + 1 :]
        return out_bits, out_act

    def _use_shortcut(self, t: int, ok: np.ndarray) -> bool:
        """Record the shortcut result for step ``t``; whether every option of it is feasible."""
        if ok[1]:
            self.unconstrained = True
        self._shortcut = (t, ok)
        return bool(ok[0] or ok[1])

    # public --------------------------------------------------------------------------
    def masks(self, t: int, fixed: dict[int, int]) -> tuple[CandidateTable, np.ndarray]:
        """Decision ``t``'s candidate table and which of its rows have a feasible completion."""
        self.wants_masks = True
        table = self.table(t, fixed)
        if self._mask is not None and self._mask[0] == t:
            return table, self._mask[1]
        ok = np.ones(len(table.rows), dtype=bool)
        if not self.unconstrained:
            if self._shortcut is not None and self._shortcut[0] == t:
                all_ok = bool(self._shortcut[1][0] or self._shortcut[1][1])
            else:
                bits, act = self._shortcut_states(t, fixed, self.pricer.bits, self.pricer.act)
                all_ok = self._use_shortcut(t, feasible(self.pricer.ratios(bits, act)))
            if not all_ok:
                ok = feasible(self.pricer.ratios_with_block(self.decisions[t].layer, table.bits, table.act))
        self._mask = (t, ok)
        return table, ok

    def resolve(
        self, t: int, fixed: list[dict[int, int]], requested: tuple[int, ...]
    ) -> tuple[np.ndarray, tuple[int, ...], np.ndarray, str]:
        """What decision ``t`` applies for ``requested``: ``(row, options, ratios, reason)``.

        ``reason`` is ``""`` when the request is applied as is, ``"space"`` when zero-bit groups
        were raised because they pruned too much, ``"budget"`` when it was projected onto
        the feasible set. ``ratios`` are the committed state's cost / limit after the step.
        """
        d = self.decisions[t]
        row, applied = self._compose(t, fixed[d.layer], requested)
        reason = "space" if applied != requested else ""
        self._mask = None
        if self._tight and not self.unconstrained:
            # The last request was infeasible: price this one with its projection path at once.
            row, applied, ratios, moved = project(self.pricer, d.layer, d, fixed[d.layer], applied, check_request=True)
        else:
            ratios = self._price_step(t, fixed, row, applied)
            moved = not self.unconstrained and not feasible(ratios[None])[0]
            if moved:
                row, applied, ratios, _ = project(self.pricer, d.layer, d, fixed[d.layer], applied)
        self._tight = moved
        if moved:
            self._shortcut = None
            reason = "budget"
        return row, applied, ratios, reason

    def _price_step(self, t: int, fixed: list[dict[int, int]], row: np.ndarray, applied: tuple[int, ...]) -> np.ndarray:
        """Cost ratios of the state after applying ``row``; with the next step's shortcut
        states in the same call when an agent uses masks."""
        d = self.decisions[t]
        c = self.choices[d.layer]
        lo, hi = self.pricer.offsets[d.layer], self.pricer.offsets[d.layer + 1]
        bits = self.pricer.bits.copy()
        act = self.pricer.act.copy()
        bits[lo:hi], act[d.layer] = c.row_bits(row)
        nxt = t + 1
        if not (self.wants_masks and not self.unconstrained and nxt < len(self.decisions)):
            return self.pricer.ratios(bits[None, :], act[None, :])[0]
        layer = self.decisions[nxt].layer
        nfixed = dict(fixed[layer])
        if layer == d.layer:
            for comp, opt in zip(d.components, applied, strict=True):
                nfixed.update(fixed_positions(comp, opt, c))
        sb, sa = self._shortcut_states(nxt, nfixed, bits, act)
        ratios = self.pricer.ratios(np.concatenate([bits[None, :], sb]), np.concatenate([act[None, :], sa]))
        if feasible(ratios[:1])[0]:
            self._use_shortcut(nxt, feasible(ratios[1:]))
        return ratios[0]
