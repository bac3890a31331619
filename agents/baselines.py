"""Fair baselines and honest evaluation counts for comparing searchers.

- :func:`uniform_combinations` lists every uniform policy of a search space: each weight
  bit-width x each activation bit-width x each sparsity level that the free layers share,
  so decoupled combinations such as W2A8 are there (under a size-only budget activations
  cost nothing, and tying them to the weights would handicap the baseline). Pinned layers
  keep the bits the space pins them to.
- :func:`feasible_uniform` keeps the ones a bound budget admits, priced by the cost model.
- :func:`enumerate_layer_policies` lists a whole (small) space at layer level: one sparsity
  level, one weight bit-width and one activation bit-width per layer, every combination.
- :class:`DistinctEvaluator` wraps an evaluator and counts distinct policies: a repeat
  (the same canonical policy at the same fidelity) is answered from memory and not counted,
  so two searchers can be given the same number of distinct evaluations.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from agents.base import Callback
from agents.records import TrialRecord
from automl.cost import CostModel, Costs
from automl.errors import ConfigError, PolicyError
from automl.problem.budget import BoundBudget
from automl.problem.cache import evaluator_fidelity
from automl.problem.metrics import Metrics, PolicyEvaluator
from search_spaces.policy import LayerPolicy, Policy
from search_spaces.space import SearchSpace


@dataclass(frozen=True)
class UniformChoice:
    """One uniform policy: every free layer at ``weight_bits`` / ``act_bits`` / ``sparsity``.

    Attributes:
        weight_bits: weight bit-width of every free layer's kept channels.
        act_bits: activation bit-width of every free layer's input.
        sparsity: the sparsity level asked of every prunable layer (each takes its
            highest level not above it).
        policy: the decoded policy (pinned layers at their pinned bits).
        costs: its price when it came from :func:`feasible_uniform`, else ``None``.
    """

    weight_bits: int
    act_bits: int
    sparsity: float
    policy: Policy
    costs: Costs | None = None

    @property
    def label(self) -> str:
        """``W2A8`` or ``W3A4-sp0.25``."""
        text = f"W{self.weight_bits}A{self.act_bits}"
        return text + (f"-sp{self.sparsity:g}" if self.sparsity else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight_bits": self.weight_bits, "act_bits": self.act_bits, "sparsity": self.sparsity,
            "policy": self.policy.to_dict(), "costs": self.costs.to_dict() if self.costs is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UniformChoice:
        costs = data.get("costs")
        return cls(int(data["weight_bits"]), int(data["act_bits"]), float(data["sparsity"]),
                   Policy.from_dict(data["policy"]), Costs.from_dict(costs) if costs is not None else None)


def _free_layers(space: SearchSpace) -> list[Any]:
    return [s for s in space.layers if not s.pinned] or list(space.layers)


def uniform_combinations(space: SearchSpace) -> list[UniformChoice]:
    """Every distinct uniform policy of ``space``, widest bits and least pruning first.

    The weight and activation bit-widths are those every free layer allows (taken
    independently: W2A8 as well as W2A2); the sparsity levels are those of any prunable
    layer. A combination the space cannot decode (more pruning than a coupled group
    allows) is left out, and one that decodes to a policy already listed is listed once.
    """
    free = _free_layers(space)
    wbits = sorted(set.intersection(*(set(s.nonzero_bits) for s in free)), reverse=True)
    abits = sorted(set.intersection(*(set(s.act_bits) for s in free)), reverse=True)
    levels = sorted(set().union(*(set(s.sparsity_levels) for s in free)))
    out: list[UniformChoice] = []
    seen: set[str] = set()
    for w, a, lv in itertools.product(wbits, abits, levels):
        try:
            policy = space.uniform(w, act_bits=a, sparsity=lv)
        except PolicyError:
            continue
        key = policy.key()
        if key not in seen:
            seen.add(key)
            out.append(UniformChoice(w, a, float(lv), policy))
    return out


def uniform_set(space: SearchSpace) -> frozenset[Policy]:
    """Every uniform policy of ``space`` (:func:`uniform_combinations`), for membership tests."""
    return frozenset(c.policy for c in uniform_combinations(space))


def feasible_uniform(space: SearchSpace, cost_model: CostModel, bound: BoundBudget) -> list[UniformChoice]:
    """The uniform combinations of ``space`` that meet ``bound``, each with its price."""
    out = []
    for choice in uniform_combinations(space):
        costs = cost_model.price(choice.policy)
        if bound.feasible(costs):
            out.append(UniformChoice(choice.weight_bits, choice.act_bits, choice.sparsity, choice.policy, costs))
    return out


def enumerate_layer_policies(space: SearchSpace, limit: int = 100_000) -> Iterator[Policy]:
    """Every distinct layer-level policy of ``space``: per layer one sparsity level, one
    weight bit-width for all its channel groups and one activation bit-width.

    Coupled layers that together would prune more than allowed are skipped (the space
    rejects them). Meant for exhaustive ground truths on small spaces.

    Raises:
        ConfigError: if the product of the per-layer choices exceeds ``limit``.
    """
    per_layer: list[list[LayerPolicy]] = []
    for s in space.layers:
        options: dict[LayerPolicy, None] = {}
        for lv, w, a in itertools.product(s.sparsity_levels, s.nonzero_bits, s.act_bits):
            try:
                options[space.decode(s.name, lv, [w] * s.n_groups, a)] = None
            except PolicyError:
                continue
        per_layer.append(list(options))
    total = 1
    for options in per_layer:
        total *= len(options)
    if total > limit:
        raise ConfigError(
            f"the space has {total} layer-level policies, more than limit={limit}. Shrink the space "
            "(fewer bit-widths or sparsity levels, more pinned layers) or raise the limit."
        )
    for combo in itertools.product(*per_layer):
        policy = Policy(tuple(zip(space.names, combo, strict=True)))
        try:
            space.validate(policy)
        except PolicyError:
            continue
        yield policy


class DistinctEvaluator:
    """Counts the distinct policies an evaluator is asked about; repeats are free.

    A policy's identity is its canonical key: the policy the network really runs
    (:meth:`SearchSpace.resolve`, channel coupling applied) when a space is given, the
    policy itself otherwise, together with the fidelity. The first request of a key is
    passed to the wrapped evaluator and counted in :attr:`distinct`; later requests are
    answered from memory and counted in :attr:`hits` only.

    Attributes the wrapped evaluator has (``baseline``, ``problem``, ...) are reachable
    through the wrapper, like :class:`automl.problem.cache.CachedEvaluator`.

    Args:
        evaluator: anything with ``evaluate(policy[, fidelity]) -> Metrics`` (an
            :class:`~automl.evaluation.evaluator.Evaluator`, a :class:`~automl.problem.cache.CachedEvaluator`
            shared between several counters, or a fake).
        space: the search space used to canonicalise policies; ``None`` keys by the
            policy as given.
    """

    def __init__(self, evaluator: PolicyEvaluator, space: SearchSpace | None = None) -> None:
        if not callable(getattr(evaluator, "evaluate", None)):
            raise ConfigError(
                f"DistinctEvaluator needs an object with evaluate(policy) -> Metrics, got {type(evaluator).__name__}."
            )
        self.evaluator = evaluator
        self.space = space
        self._memory: dict[tuple[str, int], Metrics] = {}
        self._charged: set[tuple[str, int]] = set()
        self.hits = 0
        self.calls = 0
        self.charged_evaluations = 0

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("evaluator")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def key(self, policy: Policy, fidelity: int | None = None) -> tuple[str, int]:
        """The canonical identity of ``policy`` at ``fidelity`` (the evaluator's default when ``None``)."""
        canonical = self.space.resolve(policy) if self.space is not None else policy
        level = evaluator_fidelity(self.evaluator) if fidelity is None else int(fidelity)
        return canonical.key(), level

    @property
    def distinct(self) -> int:
        """Distinct policies evaluated through this wrapper, plus what :meth:`charge` added."""
        return len(self._memory.keys() | self._charged) + self.charged_evaluations

    def charge(self, keys: Iterable[tuple[str, int]] = (), evaluations: int = 0) -> None:
        """Count work done once for several searchers (a shared sensitivity stage) here too.

        Args:
            keys: canonical keys (from :meth:`key` or another counter's :meth:`keys`) of
                policies evaluated elsewhere; they count once, and asking for one later is free.
            evaluations: work that evaluated no policy of the space (a curvature estimate),
                in evaluations of the search's evaluator.
        """
        if evaluations < 0:
            raise ConfigError(f"evaluations must be >= 0, got {evaluations}")
        self._charged.update((str(k), int(f)) for k, f in keys)
        self.charged_evaluations += int(evaluations)

    def keys(self) -> set[tuple[str, int]]:
        """The canonical keys counted so far."""
        return set(self._memory) | self._charged

    def evaluate(self, policy: Policy, fidelity: int | None = None) -> Metrics:
        """The metrics of ``policy``; evaluated (and counted) only the first time its key is seen."""
        key = self.key(policy, fidelity)
        self.calls += 1
        found = self._memory.get(key)
        if found is not None:
            self.hits += 1
            return found
        if fidelity is None:
            metrics = self.evaluator.evaluate(policy)
        else:
            metrics = self.evaluator.evaluate(policy, fidelity)  # type: ignore[call-arg]
        if key in self._charged:
            self.hits += 1  # already paid for by the charged stage
        self._memory[key] = metrics
        return metrics


class DistinctLimit(Callback):
    """Stops a search once ``counter`` has counted ``limit`` distinct policies.

    Give the searcher's :meth:`~agents.base.Searcher.run` a generous record cap (repeats
    are records but free); the search then ends with exactly ``limit`` distinct policies
    counted, or fewer if the searcher runs out of new proposals before the cap.
    """

    def __init__(self, counter: DistinctEvaluator, limit: int) -> None:
        if limit < 1:
            raise ConfigError(f"limit must be a positive number of distinct evaluations, got {limit}")
        self.counter = counter
        self.limit = int(limit)

    def on_trial(self, record: TrialRecord) -> bool:
        return self.counter.distinct < self.limit
