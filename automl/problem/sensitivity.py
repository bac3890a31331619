"""Per-layer sensitivities: the damage of each layer decision, the separable proxy objective.

A layer decision is a sparsity level x a uniform weight bit-width x an activation
bit-width (the choices of :meth:`SearchSpace.decode` with every channel group at the same
bits). :class:`Sensitivities` holds one number per decision and layer; the proxy objective
of a policy is their sum over layers. It is what :func:`automl.problem.ilp.solve_ilp` minimises
exactly and what :func:`automl.problem.repair.repair` spends least of.

Sensitivities come from any callable ``fn(layer, sparsity, weight_bits, act_bits)`` (tests
pass synthetic ones), from :meth:`Sensitivities.heuristic` (an uninformed prior), or from
:func:`measure_sensitivities`, which evaluates one-factor-at-a-time changes of a reference
policy and caches them in a JSON file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl.errors import ConfigError, PolicyError
from automl.problem.metrics import Metrics
from search_spaces.policy import FLOAT_BITS, LayerPolicy, Policy
from search_spaces.space import LayerSpace, SearchSpace

SENSITIVITY_SCHEMA_VERSION = 1
SensitivityFn = Callable[[str, float, int, int], float]


@dataclass(frozen=True)
class LayerSensitivity:
    """Damage of every decision of one layer, ``values[s][w][a]`` (row-major, flattened)."""

    name: str
    sparsity_levels: tuple[float, ...]
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        expected = len(self.sparsity_levels) * len(self.weight_bits) * len(self.act_bits)
        if len(self.values) != expected:
            raise ConfigError(f"layer {self.name!r}: expected {expected} sensitivities, got {len(self.values)}")

    def table(self) -> np.ndarray:
        """``[S, W, A]`` array of the values."""
        return np.asarray(self.values, dtype=float).reshape(
            len(self.sparsity_levels), len(self.weight_bits), len(self.act_bits)
        )

    def at(self, sparsity: float, weight_bits: int, act_bits: int) -> float:
        """Value of one decision; sparsity between levels is interpolated linearly (clamped)."""
        t = self.table()
        try:
            w, a = self.weight_bits.index(weight_bits), self.act_bits.index(act_bits)
        except ValueError as exc:
            raise PolicyError(
                f"layer {self.name!r}: no sensitivity for {weight_bits}-bit weights / {act_bits}-bit activations; "
                f"known are {list(self.weight_bits)} / {list(self.act_bits)}"
            ) from exc
        return float(np.interp(sparsity, self.sparsity_levels, t[:, w, a]))

    def of_layer_policy(self, lp: LayerPolicy) -> float:
        """Value of a per-channel layer policy: the mean over kept channels of :meth:`at`."""
        bits = np.asarray(lp.weight_bits)
        kept = bits[bits > 0]
        sparsity = 1.0 - kept.size / bits.size
        if not kept.size:
            return self.at(sparsity, self.weight_bits[0], lp.act_bits)
        values, counts = np.unique(kept, return_counts=True)
        return float(sum(c * self.at(sparsity, int(b), lp.act_bits) for b, c in zip(values, counts, strict=True)) / kept.size)


@dataclass(frozen=True)
class Sensitivities:
    """One :class:`LayerSensitivity` per layer of a search space, in space order.

    Attributes:
        layers: the per-layer tables.
        source: how they were made (``callable``, ``heuristic``, ``measured:<metric>``).
        key: the cache key of measured sensitivities (empty otherwise).
    """

    layers: tuple[LayerSensitivity, ...]
    source: str = "callable"
    key: str = ""
    schema_version: int = SENSITIVITY_SCHEMA_VERSION

    @classmethod
    def from_callable(cls, space: SearchSpace, fn: SensitivityFn, source: str = "callable") -> Sensitivities:
        """Tabulate ``fn(layer, sparsity, weight_bits, act_bits)`` over every decision of ``space``."""
        layers = []
        for s in space.layers:
            values = tuple(
                float(fn(s.name, float(lv), int(w), int(a)))
                for lv in s.sparsity_levels for w in s.nonzero_bits for a in s.act_bits
            )
            layers.append(LayerSensitivity(s.name, tuple(s.sparsity_levels), s.nonzero_bits, tuple(s.act_bits), values))
        return cls(tuple(layers), source)

    @classmethod
    def additive(
        cls,
        space: SearchSpace,
        sparsity: Mapping[str, Mapping[float, float]],
        weight: Mapping[str, Mapping[int, float]],
        act: Mapping[str, Mapping[int, float]],
        source: str = "additive",
        key: str = "",
    ) -> Sensitivities:
        """``value = sparsity[l][s] + weight[l][w] + act[l][a]`` (missing entries count 0)."""

        def fn(name: str, s: float, w: int, a: int) -> float:
            return sparsity.get(name, {}).get(s, 0.0) + weight.get(name, {}).get(w, 0.0) + act.get(name, {}).get(a, 0.0)

        return cls(cls.from_callable(space, fn).layers, source, key)

    @classmethod
    def heuristic(cls, space: SearchSpace) -> Sensitivities:
        """An uninformed prior for when nothing was measured: every layer alike; a kept
        channel costs ``4**(2-bits)`` per quantized operand (float costs 0, 2 bits costs 1
        each) and a pruned channel costs 4, more than any quantized one, so that pruning is
        never free."""

        def fn(_name: str, s: float, w: int, a: int) -> float:
            noise = sum(0.0 if b >= FLOAT_BITS else 4.0 ** (2 - b) for b in (w, a))
            return ((1.0 - s) * noise + 4.0 * s) / len(space.layers)

        return cls(cls.from_callable(space, fn).layers, "heuristic")

    def layer(self, name: str) -> LayerSensitivity:
        for ls in self.layers:
            if ls.name == name:
                return ls
        raise KeyError(name)

    def check(self, space: SearchSpace) -> Sensitivities:
        """Raise :class:`ConfigError` unless every decision of ``space`` has a value."""
        if tuple(ls.name for ls in self.layers) != space.names:
            raise ConfigError(
                f"sensitivities are for layers {[ls.name for ls in self.layers]}, the space has {list(space.names)}. "
                "Measure them for this model and space."
            )
        for ls, s in zip(self.layers, space.layers, strict=True):
            if not (set(s.sparsity_levels) <= set(ls.sparsity_levels) and set(s.nonzero_bits) <= set(ls.weight_bits)
                    and set(s.act_bits) <= set(ls.act_bits)):
                raise ConfigError(f"layer {s.name!r}: the sensitivities do not cover every choice of the space")
        return self

    def policy_value(self, policy: Policy, space: SearchSpace) -> float:
        """The proxy objective of ``policy`` after channel coupling (what the network runs).

        The union of a group's pruned channels may exceed ``max_sparsity`` (producers prune
        different channels), so this does not re-validate the resolved policy.
        """
        by_name = policy.as_dict()
        total = 0.0
        for members in space.coupled().values():
            pruned = np.zeros(len(by_name[members[0]].weight_bits), dtype=bool)
            for m in members:
                pruned |= np.asarray(by_name[m].weight_bits) == 0
            for m in members:
                lp = by_name[m]
                bits = np.where(pruned, 0, np.asarray(lp.weight_bits))
                total += self.layer(m).of_layer_policy(LayerPolicy(lp.act_bits, tuple(int(b) for b in bits)))
        return float(total)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version, "source": self.source, "key": self.key,
            "layers": [
                {"name": ls.name, "sparsity_levels": list(ls.sparsity_levels), "weight_bits": list(ls.weight_bits),
                 "act_bits": list(ls.act_bits), "values": list(ls.values)}
                for ls in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sensitivities:
        if data.get("schema_version") != SENSITIVITY_SCHEMA_VERSION:
            raise ConfigError(f"sensitivity schema {data.get('schema_version')!r} is not {SENSITIVITY_SCHEMA_VERSION}")
        layers = tuple(
            LayerSensitivity(d["name"], tuple(float(x) for x in d["sparsity_levels"]), tuple(d["weight_bits"]),
                             tuple(d["act_bits"]), tuple(float(v) for v in d["values"]))
            for d in data["layers"]
        )
        return cls(layers, str(data.get("source", "")), str(data.get("key", "")))


def as_sensitivities(space: SearchSpace, sens: Sensitivities | SensitivityFn | None) -> Sensitivities:
    """Accept tables, a callable or ``None`` (the heuristic prior) and check them against ``space``."""
    if sens is None:
        return Sensitivities.heuristic(space)
    if isinstance(sens, Sensitivities):
        return sens.check(space)
    if callable(sens):
        return Sensitivities.from_callable(space, sens)
    raise ConfigError(f"sensitivities must be a Sensitivities table or a callable, got {type(sens).__name__}")


def reference_decision(s: LayerSpace, lp: LayerPolicy) -> tuple[float, int, int]:
    """The ``(sparsity level, uniform weight bits, act bits)`` nearest to a layer policy."""
    kept = [b for b in lp.weight_bits if b > 0]
    bits = max(kept) if kept else s.nonzero_bits[0]
    level = min(s.sparsity_levels, key=lambda v: (abs(v - lp.sparsity), v))
    return float(level), int(bits), int(lp.act_bits)


_DAMAGE = {
    "kl": lambda m, base: m.kl - base.kl,
    "loss": lambda m, base: m.loss - base.loss,
    "accuracy": lambda m, base: base.accuracy - m.accuracy,
}


Factors = tuple[dict[str, dict[float, float]], dict[str, dict[int, float]], dict[str, dict[int, float]]]


def _measure_factors(
    evaluate_fn: Callable[[Policy], Metrics], space: SearchSpace, reference_policy: Policy, damage: Any
) -> Factors:
    """One-at-a-time damages: per layer sparsity level, weight bits and activation bits."""
    base = evaluate_fn(reference_policy)
    ref = {s.name: reference_decision(s, lp) for s, (_, lp) in zip(space.layers, reference_policy, strict=True)}

    def changed(updates: Mapping[str, tuple[float, int, int]]) -> float:
        policy = reference_policy
        for name, (lv, w, a) in updates.items():
            policy = policy.replace(name, space.decode(name, lv, [w] * space.layer(name).n_groups, a))
        return float(damage(evaluate_fn(policy), base))

    sparsity: dict[str, dict[float, float]] = {s.name: {} for s in space.layers}
    weight: dict[str, dict[int, float]] = {s.name: {} for s in space.layers}
    act: dict[str, dict[int, float]] = {s.name: {} for s in space.layers}
    for members in space.coupled().values():
        lead = space.layer(members[0])
        for lv in lead.sparsity_levels:
            if lv == ref[lead.name][0]:
                continue
            try:
                d = changed({m: (lv, ref[m][1], ref[m][2]) for m in members})
            except PolicyError:  # this level prunes more than max_sparsity allows: never chosen
                continue
            for m in members:
                sparsity[m][lv] = d / len(members)
    for s in space.layers:
        lv, w0, a0 = ref[s.name]
        for w in s.nonzero_bits:
            if w != w0:
                weight[s.name][w] = changed({s.name: (lv, w, a0)})
        for a in s.act_bits:
            if a != a0:
                act[s.name][a] = changed({s.name: (lv, w0, a)})
    return sparsity, weight, act


def measure_sensitivities(
    evaluate_fn: Callable[[Policy], Metrics],
    space: SearchSpace,
    reference_policy: Policy,
    *,
    metric: str = "kl",
    cache_path: str | Path | None = None,
    cache_tag: str = "",
) -> Sensitivities:
    """Measure the damage of every factor of every layer decision, one change at a time.

    Starting from ``reference_policy``, each layer's weight bits and activation bits are
    changed alone, and each coupled group's sparsity is changed for all its producers at
    once (the group's damage is split evenly over its producers). The table is the
    factorisation ``damage(s, w, a) = S(s) + W(w) + A(a)``, which needs
    ``sum(levels - 1) + sum(W - 1 + A - 1) + 1`` evaluations instead of ``S x W x A`` per layer.

    Args:
        evaluate_fn: ``evaluate(policy) -> Metrics`` (e.g. ``Evaluator.evaluate``).
        space: the search space.
        reference_policy: the policy changes start from, best a uniform one (e.g.
            ``space.uniform(8)``): a changed layer takes the reference's widest kept bits.
        metric: damage measure: ``kl`` or ``loss`` increase, or ``accuracy`` drop.
        cache_path: JSON file of measured tables keyed by a hash of the space, the
            reference, the metric and ``cache_tag``; read if the key is there, else written.
        cache_tag: extra cache-key text (e.g. a hash of the model's weights and of the
            evaluator's data), since the key cannot see inside ``evaluate_fn``.
    """
    if metric not in _DAMAGE:
        raise ConfigError(f"metric must be one of {sorted(_DAMAGE)}, got {metric!r}")
    space.validate(reference_policy)
    payload = json.dumps([space.to_dict(), reference_policy.to_dict(), metric, cache_tag], sort_keys=True)
    key = hashlib.sha1(payload.encode()).hexdigest()
    path = Path(cache_path) if cache_path is not None else None
    cache = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    if key in cache:
        return Sensitivities.from_dict(cache[key]).check(space)
    sparsity, weight, act = _measure_factors(evaluate_fn, space, reference_policy, _DAMAGE[metric])
    result = Sensitivities.additive(space, sparsity, weight, act, source=f"measured:{metric}", key=key)
    if path is not None:
        cache[key] = result.to_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache))
    return result
