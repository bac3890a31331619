"""The episode machinery both compression envs share.

An episode walks the layers of the search space in execution order. Each step takes one
:class:`~envs.choices.Decision`; what a decision holds is the only thing the two envs
define (:class:`~envs.layer_quant.LayerQuantEnv`: uniform weight bits and activation bits
of a layer; :class:`~envs.joint.JointPruneQuantEnv`: a sparsity level and the bits of each
importance-ranked channel group). Everything else lives here: the Box action decoding,
budget handling, observations, the final policy, its costs, evaluation and reward.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from automl.cost import CostModel, Costs
from automl.errors import ConfigError, InfeasibleBudget, SearchSpaceError
from automl.problem.budget import BoundBudget, Budget
from automl.problem.cache import CachedEvaluator
from automl.problem.metrics import Metrics, PolicyEvaluator
from automl.problem.sensitivity import Sensitivities
from envs.choices import SPARSITY, Decision, LayerChoices, component_option, fixed_positions
from envs.config import EnvConfig
from envs.features import LAYER_FEATURES, layer_features, sensitivity_vector
from envs.guard import BudgetGuard
from envs.masking import CandidateTable, Pricer, feasible
from search_spaces.network import ModelAnalysis
from search_spaces.policy import Policy
from search_spaces.space import LayerSpace, SearchSpace


def bind_budget(budget: Budget | BoundBudget | None, cost_model: CostModel) -> BoundBudget | None:
    """A :class:`BoundBudget` from a ``Budget`` (bound here), a ``BoundBudget`` or ``None``."""
    if budget is None or isinstance(budget, BoundBudget):
        return budget
    if isinstance(budget, Budget):
        return budget.bind(cost_model)
    raise ConfigError(
        f"budget must be an automl.problem.budget.Budget, a BoundBudget or None, got {type(budget).__name__}. "
        "Build one with Budget.parse(['size<=0.125x'])."
    )


Sensitivity = Sensitivities | Mapping[str, float] | Sequence[float] | np.ndarray | None


class CompressionEnv(gym.Env, ABC):
    """Base of the layer-by-layer compression envs (see the subclasses' docstrings).

    Args:
        analysis: the analysed model.
        space: its search space.
        cost_model: prices policies (:class:`~automl.cost.CostModel`).
        budget: the constraints (:class:`~automl.problem.budget.Budget`, bound here, or a
            ``BoundBudget``); ``None`` for an unconstrained search.
        evaluator: scores the final policy of every episode (``evaluate(policy) -> Metrics``).
        sensitivity: per-layer sensitivity for the observation: one number per layer (space
            order), a mapping ``name -> number``, or a :class:`~automl.problem.sensitivity.Sensitivities`
            table (also handed to the repair); zeros when ``None``.
        config: budget mode, reward and Lagrangian settings.
        reference: makes Box actions relative to this policy: the zero action picks the
            reference's option and ``v`` in [-1, 1] moves ``round(v * (n - 1))`` options from
            it (so every option stays reachable). ``None``: absolute, ``[-1, 1]`` cut into
            equal intervals, lowest option first. An agent then starts its exploration at
            a good policy (the integer program's, or uniform 8-bit) instead of the middle
            of the space.

    Scripted episodes (:meth:`queue_policies`) replay given policies whatever the agent
    sends, for warm starts; every step's ``info["executed_action"]`` is the Box action of
    the options the env really applied (after masks, projection and scripts), which is
    what an agent should learn from.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    has_phase = False

    def __init__(
        self,
        analysis: ModelAnalysis,
        space: SearchSpace,
        cost_model: CostModel,
        budget: Budget | BoundBudget | None,
        evaluator: PolicyEvaluator,
        *,
        sensitivity: Sensitivity = None,
        config: EnvConfig | None = None,
        reference: Policy | None = None,
    ) -> None:
        super().__init__()
        if analysis.names != space.names:
            raise SearchSpaceError(
                f"the search space was built for layers {list(space.names)}, the analysis has {list(analysis.names)}. "
                "Build both (and the cost model) from the same model."
            )
        self.config = config or EnvConfig()
        self.analysis, self.space, self.cost_model = analysis, space, cost_model
        self.bound = bind_budget(budget, cost_model)
        if self.config.budget_mode == "repair" and self.bound is not None:
            from automl.problem.budget import repair  # noqa: F401  (fail at construction, not at the first episode end)
        self.evaluator = (
            CachedEvaluator(evaluator) if self.config.cache and not isinstance(evaluator, CachedEvaluator) else evaluator
        )
        self.sensitivities = sensitivity.check(space) if isinstance(sensitivity, Sensitivities) else None
        self.choices = tuple(self._layer_choices(s) for s in space.layers)
        self.decisions = tuple(self._decisions())
        if not self.decisions:
            raise ConfigError(
                "every layer of this search space has a single choice (all pinned?), so there is nothing to "
                "decide. Unpin layers or widen weight_bits / act_bits."
            )
        limits = tuple(self.bound.limits) if self.bound is not None else ()
        self.pricer = Pricer(cost_model, limits, self.choices)
        self._cheapest = [c.complete({}) for c in self.choices]
        for i, row in enumerate(self._cheapest):
            self.pricer.set_row(i, row)
        self._cheap_bits, self._cheap_act = self.pricer.bits.copy(), self.pricer.act.copy()
        self._floor = self.pricer.ratios(self._cheap_bits[None], self._cheap_act[None])[0]
        self.guard = BudgetGuard(self.pricer, self.decisions, enforce=self.config.budget_mode == "mask")
        self._check_reachable(limits)
        self._features = layer_features(analysis, self._sensitivity_values(sensitivity))
        self.action_dim = max(len(d.components) for d in self.decisions)
        self.action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), dtype=np.float32)
        n_obs = len(LAYER_FEATURES) + 2 + int(self.has_phase) + self.action_dim + 2 * len(limits)
        self.observation_space = spaces.Box(-1.0, 1.0, (n_obs,), dtype=np.float32)
        self._static_obs = self._static_observations()
        self._obs_buffer = np.zeros(n_obs, dtype=np.float32)
        self._slack = np.maximum(1.0 - self._floor, 1e-6)
        self._multipliers = np.full(len(limits), self.config.lagrangian.initial)
        self._reference: float | None = self.config.reward.reference_accuracy
        self._float_costs: Costs | None = None
        if self.config.reward.cost_weight:
            self._float_costs = cost_model.float_costs()
            self._float_costs.value(self.config.reward.cost_metric)  # an unknown metric fails here, not at episode end
        self._ref: dict[tuple[int, int], tuple[int, ...]] | None = None
        if reference is not None:
            self._ref = {(d.layer, d.phase): o for d, o in zip(self.decisions, self.decision_options(reference), strict=True)}
        self._queue: list[list[tuple[int, ...]]] = []
        self._script: list[tuple[int, ...]] | None = None
        self._t = len(self.decisions)  # step() before reset() raises ResetNeeded

    # what a subclass defines ----------------------------------------------------------
    @abstractmethod
    def _layer_choices(self, s: LayerSpace) -> LayerChoices:
        """The options this env offers for one layer."""

    @abstractmethod
    def _decisions(self) -> list[Decision]:
        """The steps of an episode, in order (built from ``self.choices``)."""

    # construction helpers ------------------------------------------------------------
    def _sensitivity_values(self, sensitivity: Sensitivity) -> np.ndarray:
        if self.sensitivities is not None:  # a layer's damage at its most aggressive decision
            return np.array([max(ls.values) for ls in self.sensitivities.layers])
        return sensitivity_vector(self.space.names, sensitivity)

    def _check_reachable(self, limits: Sequence[tuple[str, float]]) -> None:
        """In mask mode the env's own cheapest policy must meet the budget."""
        if self.config.budget_mode != "mask" or feasible(self._floor[None])[0]:
            return
        over = [f"{m} (cheapest reachable {r:.3g}x the limit)" for (m, _), r in zip(limits, self._floor, strict=True) if r > 1]
        raise InfeasibleBudget(
            f"{type(self).__name__} cannot meet the budget on {', '.join(over)}: its cheapest policy "
            f"({self._cheapest_description()}) exceeds it. Raise the budget, use JointPruneQuantEnv (it prunes), "
            "or budget_mode='repair' to let the repair prune."
        )

    def _cheapest_description(self) -> str:
        return "every free layer at its lowest bits and highest sparsity"

    # gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode. A ``seed`` also restores the Lagrangian multipliers to their initial value."""
        super().reset(seed=seed)
        if seed is not None:
            self._multipliers[:] = self.config.lagrangian.initial
        self._t = 0
        self._rows = [r.copy() for r in self._cheapest]
        self._fixed: list[dict[int, int]] = [{} for _ in self.choices]
        self.pricer.bits[:] = self._cheap_bits
        self.pricer.act[:] = self._cheap_act
        self._ratios = self._floor.copy()
        self._prev = np.zeros(self.action_dim, dtype=np.float32)
        self._projections = 0
        self._projection_log: list[str] = []
        self._script = self._queue.pop(0) if self._queue else None
        self.guard.reset()
        return self._observation(), {}

    # scripted episodes ---------------------------------------------------------------
    def decision_options(self, policy: Policy) -> list[tuple[int, ...]]:
        """Per decision, the options nearest to ``policy`` (see :meth:`LayerChoices.row_of`)."""
        rows = [c.row_of(lp) for c, (_, lp) in zip(self.choices, self.space.resolve(policy), strict=True)]
        return [tuple(component_option(rows[d.layer], comp, self.choices[d.layer]) for comp in d.components)
                for d in self.decisions]

    def queue_policies(self, policies: Sequence[Policy]) -> None:
        """Replay ``policies`` as the next episodes, one each, ignoring the agent's actions."""
        self._queue.extend(self.decision_options(p) for p in policies)

    @property
    def queued(self) -> int:
        """Scripted episodes still to start."""
        return len(self._queue)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t >= len(self.decisions):
            raise ResetNeeded("the episode has ended; call reset() before step()")
        d = self.decisions[self._t]
        fixed = self._fixed[d.layer]
        requested = self._script[self._t] if self._script is not None else self.options_from_box(action, d)
        row, applied, ratios, reason = self.guard.resolve(self._t, self._fixed, requested)
        self._rows[d.layer] = row
        for comp, opt in zip(d.components, applied, strict=True):
            fixed.update(fixed_positions(comp, opt, self.choices[d.layer]))
        self.pricer.set_row(d.layer, row)
        self._ratios = ratios
        self._prev[:] = 0.0
        for k, (comp, opt) in enumerate(zip(d.components, applied, strict=True)):
            self._prev[k] = opt / (comp.n - 1) if comp.n > 1 else 0.0
        self._t += 1
        executed = np.zeros(self.action_dim, dtype=np.float32)
        raw = np.asarray(action, dtype=np.float32).reshape(-1)
        executed[: min(raw.size, self.action_dim)] = np.nan_to_num(raw[: self.action_dim])
        executed[: len(d.components)] = self.box_from_options(applied, d, self.action_dim)[: len(d.components)]
        info: dict[str, Any] = {
            "layer": self.choices[d.layer].name, "phase": d.phase, "executed_options": tuple(applied),
            "executed_action": executed, "scripted": self._script is not None,
        }
        if reason:
            self._projections += 1
            info["projection"] = {
                "reason": reason,
                "requested": self.describe(d, requested),
                "applied": self.describe(d, applied),
            }
            self._projection_log.append(
                f"{self.choices[d.layer].name}: {reason} projection {info['projection']['requested']} -> "
                f"{info['projection']['applied']}"
            )
        reward, terminated = 0.0, self._t == len(self.decisions)
        if terminated:
            reward = self._finish(info)
        return self._observation(), reward, terminated, False, info

    # actions -------------------------------------------------------------------------
    def options_from_box(self, action: Any, decision: Decision) -> tuple[int, ...]:
        """Option indices of a Box action in [-1, 1]: component k reads ``action[k]`` (relative
        to the reference's option when the env has one, see the class docstring)."""
        x = np.asarray(action, dtype=np.float64).reshape(-1).tolist()
        ref = self._ref[(decision.layer, decision.phase)] if self._ref is not None else None
        out = []
        for k, comp in enumerate(decision.components):
            v = min(max(x[k], -1.0), 1.0) if math.isfinite(x[k]) else -1.0
            if ref is None:
                out.append(min(max(int(math.floor((v + 1.0) * 0.5 * comp.n)), 0), comp.n - 1))
            else:
                out.append(min(max(ref[k] + int(round(v * (comp.n - 1))), 0), comp.n - 1))
        return tuple(out)

    def box_from_options(self, options: Sequence[int], decision: Decision, dim: int) -> np.ndarray:
        """A Box action that selects ``options`` (inverse of :meth:`options_from_box`): the
        centre of each option's interval, or its offset from the reference."""
        ref = self._ref[(decision.layer, decision.phase)] if self._ref is not None else None
        x = np.zeros(dim, dtype=np.float32)
        for k, (comp, opt) in enumerate(zip(decision.components, options, strict=True)):
            o = min(int(opt), comp.n - 1)
            if ref is None:
                x[k] = (2 * o + 1) / comp.n - 1
            else:
                x[k] = (o - ref[k]) / (comp.n - 1) if comp.n > 1 else 0.0
        return x

    def describe(self, decision: Decision, options: Sequence[int]) -> dict[str, float]:
        """Readable values of ``options``: sparsity level, bit-widths."""
        c = self.choices[decision.layer]
        out: dict[str, float] = {}
        for comp, opt in zip(decision.components, options, strict=True):
            if comp.kind == SPARSITY:
                out["sparsity"] = float(c.levels[opt])
            elif comp.kind == "group":
                out[f"group{comp.group}_bits"] = int(c.weight_bits[opt])
            elif comp.kind == "uniform":
                out["weight_bits"] = int(c.weight_bits[c.nonzero + opt])
            else:
                out["act_bits"] = int(c.act_bits[opt])
        return out

    @property
    def phase_index(self) -> int | None:
        """Position of the phase flag in the observation (``None`` if the env has no phase)."""
        return len(LAYER_FEATURES) + 1 if self.has_phase else None

    @property
    def current_decision(self) -> Decision | None:
        return self.decisions[self._t] if self._t < len(self.decisions) else None

    def mask_rows(self) -> tuple[CandidateTable, np.ndarray]:
        """The current decision's candidate table and which of its rows stay feasible.

        In ``mask`` mode a row is feasible when it, the decided layers and every undecided
        part at its cheapest valid completion meet the budget; in the other modes every
        valid row is allowed (masks then only keep the search space's own rules).
        """
        if self._t >= len(self.decisions):
            raise ResetNeeded("the episode has ended; call reset() before asking for masks")
        return self.guard.masks(self._t, self._fixed[self.decisions[self._t].layer])

    # observation ---------------------------------------------------------------------
    def _static_observations(self) -> np.ndarray:
        """Per step (and one terminal row): layer features, progress, phase, components read."""
        n = len(self.decisions)
        rows = []
        for t in range(n + 1):
            d = self.decisions[min(t, n - 1)]
            extra = [t / n] + ([float(d.phase)] if self.has_phase else []) + [len(d.components) / self.action_dim]
            rows.append(np.concatenate([self._features[d.layer], np.array(extra, dtype=np.float32)]))
        return np.stack(rows).astype(np.float32)

    def _observation(self) -> np.ndarray:
        obs = self._obs_buffer
        width = self._static_obs.shape[1]
        obs[:width] = self._static_obs[self._t]
        obs[width : width + self.action_dim] = self._prev
        if self.pricer.constrained:
            k = len(self._ratios)
            start = width + self.action_dim
            obs[start : start + k] = np.clip(self._ratios, 0.0, 1.0)
            obs[start + k :] = np.clip((1.0 - self._ratios) / self._slack, -1.0, 1.0)
        return obs.copy()

    # episode end ---------------------------------------------------------------------
    def policy(self) -> Policy:
        """The policy of the current rows, decoded by :meth:`SearchSpace.decode`, with channel
        coupling applied (:meth:`SearchSpace.resolve`: what the network runs and is priced as)."""
        rows = zip(self.choices, self._rows, strict=True)
        return self.space.resolve(Policy(tuple((c.name, c.layer_policy(row, self.space)) for c, row in rows)))

    def _reference_accuracy(self) -> float:
        if self._reference is None:
            baseline = getattr(self.evaluator, "baseline", None)
            value = float(baseline().accuracy) if callable(baseline) else 1.0
            if not value > 0:
                raise ConfigError(
                    f"the float model's accuracy is {value}, so accuracy relative to it is undefined. "
                    "Give RewardConfig(reference_accuracy=...) or check the model."
                )
            self._reference = value
        return self._reference

    def _finish(self, info: dict[str, Any]) -> float:
        policy = self.policy()
        costs = self.cost_model.price(policy)
        final, repair_record = policy, None
        if self.config.budget_mode == "repair" and self.bound is not None:
            from automl.problem.budget import repair

            final, record = repair(policy, self.cost_model, self.bound, self.sensitivities)
            repair_record = record.to_dict()
            if record.changed:
                costs = self.cost_model.price(final)
        is_feasible = self.bound is None or bool(self.bound.feasible(costs))
        if self.config.budget_mode == "mask":
            assert is_feasible, "mask mode ended infeasible: the masks and the cost model disagree"
        metrics: Metrics = self.evaluator.evaluate(final)
        terms = self._reward_terms(metrics, costs)
        info.update(
            policy=final,
            costs=costs,
            feasible=is_feasible,
            violations=self.bound.violations(costs) if self.bound is not None else {},
            repair=repair_record,
            repaired=bool(repair_record and repair_record.get("changed")),
            metrics=metrics,
            reward_terms=terms,
            projections=self._projections,
            projection_log=tuple(self._projection_log),
            multipliers=dict(zip(self.pricer.metrics, self._multipliers.tolist(), strict=True)),
        )
        if self.config.budget_mode == "repair":
            info["requested_policy"] = policy
        return float(terms["accuracy"] - terms["cost"] - terms["penalty"])

    def reward_of(self, metrics: Metrics, costs: Costs) -> float:
        """The final reward of an episode with these metrics and costs, without touching the
        Lagrangian multipliers (the penalty uses their current values)."""
        keep = self._multipliers.copy()
        terms = self._reward_terms(metrics, costs)
        self._multipliers = keep
        return float(terms["accuracy"] - terms["cost"] - terms["penalty"])

    def _reward_terms(self, metrics: Metrics, costs: Costs) -> dict[str, float]:
        r = self.config.reward
        accuracy = r.scale * metrics.accuracy / self._reference_accuracy()
        cost = 0.0
        if r.cost_weight and self._float_costs is not None:
            cost = r.cost_weight * costs.value(r.cost_metric) / self._float_costs.value(r.cost_metric)
        penalty = 0.0
        if self.config.budget_mode == "lagrangian" and self.pricer.constrained:
            ratios = np.array([costs.value(m) for m in self.pricer.metrics]) / self.pricer.limits
            penalty = float((self._multipliers * np.clip(ratios - 1.0, 0.0, None)).sum())
            lag = self.config.lagrangian
            self._multipliers = np.clip(self._multipliers + lag.lr * (ratios - 1.0), 0.0, lag.max_multiplier)
        return {"accuracy": float(accuracy), "cost": float(cost), "penalty": penalty}

