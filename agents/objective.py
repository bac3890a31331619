"""The one way every searcher scores a policy: price, repair if asked, evaluate, record.

An :class:`Objective` wraps the evaluator, the cost model and the bound budget, so random
search, the integer program, Optuna samplers and RL agents all produce identical
:class:`~agents.records.TrialRecord` values for identical policies. Feasibility is decided
by the cost model alone (no forward pass), so a searcher can reject a proposal before
spending an evaluation on it (:meth:`Objective.feasible`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from agents.records import TrialRecord
from automl.cost import CostModel, Costs
from automl.problem.budget import BoundBudget
from automl.problem.metrics import Metrics, PolicyEvaluator
from automl.problem.repair import RepairRecord
from automl.problem.repair import repair as repair_policy
from automl.problem.sensitivity import Sensitivities, SensitivityFn, as_sensitivities
from search_spaces.policy import LayerPolicy, Policy
from search_spaces.space import SearchSpace

Change = tuple[str, LayerPolicy, LayerPolicy]  # (layer, before, after), as in RepairRecord.changes


class Objective:
    """Scores policies for searchers; never changes a policy without recording it.

    Args:
        evaluator: ``evaluate(policy) -> Metrics`` (an :class:`automl.evaluation.evaluator.Evaluator`,
            a :class:`automl.problem.cache.CachedEvaluator`, or a fake in tests).
        cost_model: prices policies; its ``space`` is the search space.
        bound: the budget resolved against ``cost_model`` (:meth:`Budget.bind`).
        sensitivities: per-layer damage tables or a callable (see
            :mod:`automl.problem.sensitivity`); the heuristic prior when ``None``. Used by repair
            and by searchers that need a proxy (the integer program).
        repair: when true, a policy over budget is repaired (:func:`automl.problem.repair.repair`)
            before it is evaluated and the repair is recorded; when false it is evaluated
            as proposed and recorded as infeasible, so it can never be a search's best.
        widen_activations: when true and no constraint of ``bound`` depends on activation bits
            (a size-only budget), every layer's activations are set to its widest allowed
            bits before evaluation: the same price, never a worse quantization. Recorded on
            the trial like a repair (a step and the changed layers).

    A policy evaluated before (by this objective, or found in the evaluator's cache, as
    on a resumed search) is answered from that result and recorded as a cache hit: the
    evaluation budget of :meth:`Searcher.run` counts distinct policies only.

    After every full evaluation of a feasible policy the evaluator is told the best such
    accuracy (``set_incumbent``, when it has one) for early stopping.

    Attributes:
        n_calls: calls of this objective (in this process), cache hits included.
        evaluations_by_fidelity: fidelity -> evaluations at it (a staged trial counts at
            each; cache hits are not counted).
        incumbent: the best accuracy of a feasible, fully evaluated policy so far.
    """

    def __init__(
        self,
        evaluator: PolicyEvaluator,
        cost_model: CostModel,
        bound: BoundBudget,
        *,
        sensitivities: Sensitivities | SensitivityFn | None = None,
        repair: bool = True,
        widen_activations: bool = False,
    ) -> None:
        self.evaluator = evaluator
        self.cost_model = cost_model
        self.bound = bound
        self.space: SearchSpace = cost_model.space
        self.sensitivities = as_sensitivities(self.space, sensitivities)
        self.repair_enabled = repair
        self._act_bits = {s.name: s.act_bits for s in self.space.layers}
        # Only where no constrained metric depends on activation bits (probed, not assumed).
        self.widen_activations = bool(widen_activations) and not self._activations_priced()
        self.n_calls = 0
        self.evaluations_by_fidelity: dict[int, int] = {}
        self.incumbent: float | None = None
        self._memo: dict[tuple[str, int | None], Metrics] = {}
        self.recorded: set[str] | None = None

    # cost-only checks ----------------------------------------------------------------
    def price(self, policy: Policy) -> Costs:
        """Costs of ``policy`` (checked against the space)."""
        return self.cost_model.price(policy)

    def feasible(self, policy: Policy) -> bool:
        """Whether ``policy`` meets the budget, judged by the cost model alone."""
        return self.bound.feasible(self.price(policy))

    def violations(self, policy: Policy) -> dict[str, float]:
        """metric -> relative excess over the limit (``value / limit - 1``) for exceeded limits."""
        return self.bound.violations(self.price(policy))

    def repair(self, policy: Policy) -> tuple[Policy, RepairRecord | None]:
        """``policy`` made feasible by the budget module, or unchanged with ``None`` if it already is."""
        if self.feasible(policy):
            return policy, None
        fixed, record = repair_policy(policy, self.cost_model, self.bound, self.sensitivities)
        return fixed, record if record.changed else None

    @property
    def limits(self) -> tuple[tuple[str, float], ...]:
        return self.bound.limits

    @property
    def budget_text(self) -> tuple[str, ...]:
        return tuple(c.text for c in self.bound.budget.constraints)

    # evaluation ----------------------------------------------------------------------
    def __call__(
        self,
        policy: Policy,
        *,
        number: int | None = None,
        searcher: str = "",
        repair: bool | None = None,
        fidelity: int | None = None,
    ) -> TrialRecord:
        """Evaluate ``policy`` (repaired first if over budget and repair is on).

        Args:
            policy: a policy of :attr:`space`.
            number: the trial number to record; this objective's call count when ``None``.
            searcher: name recorded with the trial.
            repair: overrides the objective's repair setting for this call (an RL env that
                handles the budget itself evaluates its policies as they are).
            fidelity: the evaluator's fidelity for this call (its default when ``None``): a
                multi-fidelity searcher scores cheaply first. Counted per fidelity in
                :attr:`evaluations_by_fidelity`.

        Raises:
            PolicyError: if ``policy`` does not belong to the search space.
        """
        start = time.perf_counter()
        self.space.validate(policy)
        evaluated, record = policy, None
        costs = self.price(policy)
        if (self.repair_enabled if repair is None else repair) and not self.bound.feasible(costs):
            evaluated, record = repair_policy(policy, self.cost_model, self.bound, self.sensitivities)
            costs = self.price(evaluated)
            if not record.changed:
                record = None
        if self.widen_activations:
            evaluated, record, costs = self._widen(evaluated, record, costs)
        metrics, hit = self._metrics(evaluated, fidelity)
        if not hit:
            self.evaluations_by_fidelity[metrics.fidelity] = self.evaluations_by_fidelity.get(metrics.fidelity, 0) + 1
        trial = TrialRecord(
            number=self.n_calls if number is None else int(number),
            policy=evaluated,
            proposed=policy,
            metrics=metrics,
            costs=costs,
            feasible=self.bound.feasible(costs),
            repair=record,
            searcher=searcher,
            seconds=time.perf_counter() - start,
            cache_hit=hit,
        )
        self.n_calls += 1
        if self.recorded is not None:
            self.recorded.add(evaluated.key())
        self._update_incumbent(trial)
        return trial

    def _activations_priced(self) -> bool:
        """Whether any constrained metric changes with activation bits: one sampled policy,
        priced with every layer's narrowest and with its widest activations."""
        probe = self.space.sample(np.random.default_rng(0))
        narrow, wide = (self.price(self._with_acts(probe, pick)[0]) for pick in (min, max))
        return any(narrow.value(m) != wide.value(m) for m in self.bound.metrics)

    def _with_acts(self, policy: Policy, pick: Callable[[Sequence[int]], int]) -> tuple[Policy, list[Change]]:
        """``policy`` with each layer's activations at ``pick`` of its allowed bits, and the changed layers."""
        layers, changes = [], []
        for name, lp in policy.layers:
            bits = pick(self._act_bits[name])
            if lp.act_bits != bits:
                changed = replace(lp, act_bits=bits)
                changes.append((name, lp, changed))
                lp = changed
            layers.append((name, lp))
        return replace(policy, layers=tuple(layers)), changes

    def _widen(self, policy: Policy, record: RepairRecord | None, costs: Costs) -> tuple[Policy, RepairRecord | None, Costs]:
        wide, changes = self._with_acts(policy, max)
        if not changes:
            return policy, record, costs
        after = self.price(wide)
        step = f"activations of {len(changes)} layer(s) widened to their widest bits (no constraint prices them)"
        if record is None:
            return wide, RepairRecord(changed=True, changes=tuple(changes), steps=(step,), before=costs, after=after), after
        return wide, replace(record, changes=record.changes + tuple(changes), steps=record.steps + (step,), after=after), after

    def restore(self, records: Sequence[TrialRecord]) -> None:
        """Continue from the ``records`` of a search (a resume): the incumbent that early
        stopping compares with, and the policies that count as evaluated.

        After this call a result read from a shared evaluation cache counts as a cache hit
        only when one of the search's records holds that policy. A crash between an
        evaluation (cached) and its journal line leaves a cached result no record holds;
        the resumed search then counts that policy as the new evaluation it is in the
        search, as the uninterrupted search did, instead of as a free repeat.
        """
        self.recorded = {r.policy.key() for r in records}
        for record in records:
            self._update_incumbent(record)

    def _metrics(self, policy: Policy, fidelity: int | None = None) -> tuple[Metrics, bool]:
        key = (policy.key(), fidelity)
        known = self._memo.get(key)
        if known is not None:
            return known, True
        lookup = getattr(self.evaluator, "lookup", None)
        hit = fidelity is None and callable(lookup) and lookup(policy) is not None
        if self.recorded is not None:
            hit = hit and policy.key() in self.recorded
        metrics = self.evaluator.evaluate(policy) if fidelity is None else self.evaluator.evaluate(policy, fidelity)
        self._memo[key] = metrics
        return metrics, hit

    def _update_incumbent(self, trial: TrialRecord) -> None:
        acc = trial.metrics.accuracy
        if not trial.feasible or trial.metrics.stopped_early or not math.isfinite(acc):
            return
        if self.incumbent is None or acc > self.incumbent:
            self.incumbent = acc
            tell = getattr(self.evaluator, "set_incumbent", None)
            if callable(tell):
                tell(acc)
