"""Repair: turn any policy into one that meets the budget by the least damaging changes.

The repair is a greedy multiple-choice-knapsack step. From the current policy, every
candidate change is priced at once (:meth:`CostModel.price_arrays`):

- per layer, clamp its weight bits to a lower allowed width and/or lower its activation
  bits (every pair, so a runtime threshold such as "int8 needs both <= 8 bits" is seen);
- per coupled channel group, prune it (all producers) to a higher sparsity level, the least
  important channels of its first producer first.

Each candidate's *progress* is how much it reduces the total budget excess
``sum(max(0, cost / limit - 1))`` (overshooting a limit earns nothing) and its *damage* is
the increase of the proxy objective (:class:`~automl.problem.sensitivity.Sensitivities`). The
candidate with the least damage per unit of progress is applied, and the loop repeats until
the policy fits. Ties break on layer order, so the result is deterministic. Every applied
step is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from automl.cost import CostModel, Costs
from automl.errors import AutoMLError, InfeasibleBudget
from automl.problem.budget import TOLERANCE, BoundBudget
from automl.problem.sensitivity import LayerSensitivity, Sensitivities, SensitivityFn, as_sensitivities
from search_spaces.policy import LayerPolicy, Policy

MAX_STEPS = 10_000


@dataclass(frozen=True)
class RepairRecord:
    """What :func:`repair` changed, to be stored with the trial.

    Attributes:
        changed: whether the policy was changed at all.
        changes: ``(layer, before, after)`` for every layer that differs.
        steps: the applied moves in order, readable.
        before: costs of the input policy.
        after: costs of the returned policy.
        proxy_increase: increase of the proxy objective (sum of sensitivities).
    """

    changed: bool
    changes: tuple[tuple[str, LayerPolicy, LayerPolicy], ...] = ()
    steps: tuple[str, ...] = ()
    before: Costs | None = None
    after: Costs | None = None
    proxy_increase: float = 0.0
    violations: tuple[tuple[str, float], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        def lp(p: LayerPolicy) -> dict[str, Any]:
            return {"act_bits": p.act_bits, "weight_bits": list(p.weight_bits)}

        return {
            "changed": self.changed,
            "changes": [{"layer": n, "before": lp(b), "after": lp(a)} for n, b, a in self.changes],
            "steps": list(self.steps),
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict() if self.after else None,
            "proxy_increase": self.proxy_increase,
            "violations": dict(self.violations),
        }


def _interp_rows(ls: LayerSensitivity, sparsity: float) -> np.ndarray:
    """``[W, A]`` sensitivities of this layer at ``sparsity`` (linear between levels)."""
    table = ls.table()
    levels = np.asarray(ls.sparsity_levels)
    if levels.size == 1:
        return table[0]
    s = float(np.clip(sparsity, levels[0], levels[-1]))
    i = int(np.clip(np.searchsorted(levels, s, side="right") - 1, 0, levels.size - 2))
    t = (s - levels[i]) / (levels[i + 1] - levels[i])
    return table[i] * (1 - t) + table[i + 1] * t


def _value(ls: LayerSensitivity, bits: np.ndarray, act: int) -> float:
    """Proxy value of one layer (:meth:`LayerSensitivity.of_layer_policy` on arrays)."""
    kept = bits[bits > 0]
    rows = _interp_rows(ls, 1.0 - kept.size / bits.size)
    a = ls.act_bits.index(act)
    if not kept.size:
        return float(rows[0, a])
    idx = np.searchsorted(np.asarray(ls.weight_bits), kept)
    return float(rows[idx, a].mean())


@dataclass
class _Move:
    damage: float
    layer: int
    label: str
    bits: np.ndarray
    act: np.ndarray


class _Repairer:
    def __init__(self, cm: CostModel, bound: BoundBudget, sens: Sensitivities, policy: Policy) -> None:
        self.cm, self.bound, self.sens = cm, bound, sens
        self.space = cm.space
        bits, act = cm.policy_arrays(policy)
        self.bits, self.act = bits.copy(), act.copy()
        self.nm = cm.policy_nm(policy)  # repair changes bits only: every layer keeps its N:M pattern
        self.nm_names = [lp.nm for _, lp in policy]
        self.slices = [slice(int(o), int(o) + int(c)) for o, c in zip(cm.offsets, cm.out_total, strict=True)]
        groups = self.space.coupled()
        self.members = [[self.space.names.index(m) for m in groups[s.coupled_group]] for s in self.space.layers]
        self.steps: list[str] = []

    def excess(self, table: dict[str, np.ndarray]) -> np.ndarray:
        total = 0.0
        for m, lim in self.bound.limits:
            total = total + np.maximum(0.0, np.asarray(table[m]) / lim - 1.0 - TOLERANCE)
        return np.asarray(total)

    def layer_value(self, li: int, bits: np.ndarray | None = None, act: int | None = None) -> float:
        """Proxy value of layer ``li`` (its current bits and act unless given)."""
        b = self.resolved_row(li) if bits is None else bits
        return _value(self.sens.layers[li], b, int(self.act[li] if act is None else act))

    def group_pruned(self, li: int) -> np.ndarray:
        """Channels of ``li``'s coupled group pruned by any producer (what the network prunes)."""
        pruned = np.zeros(self.space.layers[li].out_channels, dtype=bool)
        for i in self.members[li]:
            pruned |= self.bits[self.slices[i]] == 0
        return pruned

    def resolved_row(self, li: int) -> np.ndarray:
        return np.where(self.group_pruned(li), 0, self.bits[self.slices[li]])

    def bit_moves(self) -> list[_Move]:
        """Every lower (weight clamp, activation) pair of every free layer."""
        out = []
        for li, s in enumerate(self.space.layers):
            cur = self.resolved_row(li)
            kept = cur[cur > 0]
            if s.pinned or not kept.size:
                continue
            top, a0 = int(kept.max()), int(self.act[li])
            ls = self.sens.layers[li]
            rows = _interp_rows(ls, 1.0 - kept.size / cur.size)  # [W, A]
            kidx = np.searchsorted(np.asarray(ls.weight_bits), kept)
            base = float(rows[kidx, ls.act_bits.index(a0)].mean())
            wb = [w for w in s.nonzero_bits if w <= top]
            for b in wb:
                clamped = np.minimum(kidx, ls.weight_bits.index(b))
                values = rows[clamped].mean(axis=0)  # [A]
                for a in [x for x in s.act_bits if x <= a0]:
                    if (b, a) == (top, a0):
                        continue
                    bits = self.bits.copy()
                    bits[self.slices[li]] = np.minimum(self.bits[self.slices[li]], b)
                    act = self.act.copy()
                    act[li] = a
                    parts = ([f"weights {top}->{b} bits"] if b < top else []) + (
                        [f"activations {a0}->{a} bits"] if a < a0 else []
                    )
                    damage = float(values[ls.act_bits.index(a)]) - base
                    out.append(_Move(damage, li, f"{s.name}: " + ", ".join(parts), bits, act))
        return out

    def prune_moves(self) -> list[_Move]:
        """Every higher sparsity level of every prunable coupled group.

        The new channels are pruned in the producer with the most room left under
        ``max_sparsity`` (the network prunes the union anyway), so the policy stays valid,
        and the union never grows past ``max_sparsity`` of the group.
        """
        out = []
        for members in self.space.coupled().values():
            idx = [self.space.names.index(m) for m in members]
            spaces = [self.space.layers[i] for i in idx]
            if any(not s.prunable for s in spaces):
                continue
            pruned = self.group_pruned(idx[0])
            have = int(pruned.sum())
            own = [int((self.bits[self.slices[i]] == 0).sum()) for i in idx]
            room = [s.max_pruned - o for s, o in zip(spaces, own, strict=True)]
            host = idx[int(np.argmax(room))]
            limit = min(s.max_pruned for s in spaces)  # the union stays within max_sparsity too
            order = [c for c in reversed(spaces[0].channel_rank) if not pruned[c]]
            targets = sorted({int(round(lv * spaces[0].out_channels)) for lv in spaces[0].sparsity_levels})
            before = sum(self.layer_value(i) for i in idx)
            for n in [t for t in targets if have < t <= min(limit, have + max(room))]:
                bits = self.bits.copy()
                bits[self.slices[host].start + np.array(order[: n - have])] = 0
                union = pruned.copy()
                union[order[: n - have]] = True
                damage = sum(
                    self.layer_value(i, np.where(union, 0, self.bits[self.slices[i]])) for i in idx
                ) - before
                label = f"group of {members[0]}: {have}->{n} of {spaces[0].out_channels} channels pruned"
                out.append(_Move(damage, idx[0], label, bits, self.act.copy()))
        return out

    def raw_reduction(self, table: dict[str, np.ndarray], current: dict[str, float]) -> np.ndarray:
        """Reduction of the normalised cost summed over the exceeded metrics (not clamped)."""
        total = 0.0
        for m, lim in self.bound.limits:
            if current[m] > lim:
                total = total + (current[m] - np.asarray(table[m])) / lim
        return np.asarray(total)

    def step(self, current_excess: float, current: dict[str, float]) -> bool:
        moves = self.bit_moves() + self.prune_moves()
        if not moves:
            return False
        table = self.cm.price_arrays(np.stack([m.bits for m in moves]), np.stack([m.act for m in moves]), self.nm)
        progress = current_excess - self.excess(table)
        if not (progress > 1e-12).any():
            # A plateau (e.g. a latency step that needs several layers lowered): steer by the
            # unclamped cost of the exceeded metrics, else by damage alone.
            progress = self.raw_reduction(table, current)
        useful = [i for i in range(len(moves)) if progress[i] > 1e-12]
        if useful:
            best = min(useful, key=lambda i: (moves[i].damage / progress[i], -progress[i], moves[i].layer, moves[i].label))
        else:
            best = min(range(len(moves)), key=lambda i: (moves[i].damage, moves[i].layer, moves[i].label))
        move = moves[best]
        self.bits, self.act = move.bits, move.act
        self.steps.append(f"{move.label} (sensitivity {move.damage:+.4g}, budget excess was {current_excess:.4g})")
        return True

    def policy(self) -> Policy:
        return Policy(tuple(
            (s.name, LayerPolicy(int(self.act[i]), tuple(int(b) for b in self.bits[self.slices[i]]), self.nm_names[i]))
            for i, s in enumerate(self.space.layers)
        ))


def repair(
    policy: Policy,
    cost_model: CostModel,
    bound_budget: BoundBudget,
    sensitivities: Sensitivities | SensitivityFn | None = None,
) -> tuple[Policy, RepairRecord]:
    """Make ``policy`` meet ``bound_budget`` by the least damaging changes.

    Args:
        policy: any policy of the cost model's space.
        cost_model: prices candidates.
        bound_budget: the limits.
        sensitivities: damage of each layer decision; ``None`` uses the heuristic prior.

    Returns:
        ``(policy, record)``: a feasible policy comes back as the same object with an
        unchanged record; otherwise the repaired policy (valid in the space).

    Raises:
        InfeasibleBudget: even the cheapest policy of the space exceeds the budget.
    """
    before = cost_model.price(policy)
    if bound_budget.feasible(before):
        return policy, RepairRecord(changed=False, before=before, after=before)
    cheapest = cost_model.lowest_costs()
    if not bound_budget.feasible(cheapest):
        worst = ", ".join(f"{m} {cheapest.value(m):.4g} > {lim:.4g}" for m, lim in bound_budget.limits
                          if cheapest.value(m) > lim)
        raise InfeasibleBudget(
            f"no policy of this space meets the budget: the cheapest policy costs {worst}. Raise the budget, "
            "allow pruning, lower the minimum bits or unpin layers."
        )
    sens = as_sensitivities(cost_model.space, sensitivities)
    space = cost_model.space
    fixer = _Repairer(cost_model, bound_budget, sens, space.validate(policy))
    current = before.as_metrics()
    for _ in range(MAX_STEPS):
        excess = float(fixer.excess(current))
        if excess <= 0 or not fixer.step(excess, current):
            break
        current = {m: float(v[0]) for m, v in cost_model.price_arrays(fixer.bits[None], fixer.act[None], fixer.nm).items()}
    result = fixer.policy()
    after = cost_model.price(result)
    if not bound_budget.feasible(after):
        raise AutoMLError(f"repair stopped with an infeasible policy after {len(fixer.steps)} steps: {after}")
    changes = tuple((n, lp, result[n]) for n, lp in policy if result[n] != lp)
    record = RepairRecord(
        changed=True, changes=changes, steps=tuple(fixer.steps), before=before, after=after,
        proxy_increase=sens.policy_value(result, space) - sens.policy_value(policy, space),
        violations=tuple(bound_budget.violations(before).items()),
    )
    return result, record
