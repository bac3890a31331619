"""Settings of the compression envs: budget handling, reward shaping, Lagrangian multiplier."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from automl.errors import ConfigError

BUDGET_MODES = ("mask", "repair", "lagrangian")
CONFIG_SCHEMA_VERSION = 1
DEFAULT_BUDGET_MODE = "mask"  # see envs/__init__.py for the measurement behind this choice


def _finite(name: str, value: float, minimum: float | None = None) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name} must be a finite number{bound}, got {value!r}")


@dataclass(frozen=True)
class RewardConfig:
    """The reward at the end of an episode (0 on every other step).

    ``reward = scale * accuracy / reference_accuracy - cost_weight * cost / float cost
    - Lagrangian penalty``.

    Attributes:
        scale: multiplies the accuracy relative to the float model (1.0 = as good as float).
        reference_accuracy: the float model's accuracy; ``None`` asks the evaluator's
            ``baseline()`` once (1.0, i.e. raw accuracy, when it has none).
        cost_weight: weight of the cost term, for multi-objective shaping (0 = off).
        cost_metric: the metric of the cost term, as a fraction of the float model's.
    """

    scale: float = 1.0
    reference_accuracy: float | None = None
    cost_weight: float = 0.0
    cost_metric: str = "bitops"

    def __post_init__(self) -> None:
        _finite("reward scale", self.scale)
        _finite("cost_weight", self.cost_weight, 0.0)
        if self.reference_accuracy is not None:
            _finite("reference_accuracy", self.reference_accuracy)
            if self.reference_accuracy <= 0:
                raise ConfigError(
                    f"reference_accuracy must be positive (the float model's accuracy), got {self.reference_accuracy}"
                )


@dataclass(frozen=True)
class LagrangianConfig:
    """Dual ascent on one multiplier per constraint (budget mode ``lagrangian``).

    After each episode ``lambda_k <- clip(lambda_k + lr * (cost_k / limit_k - 1), 0, max)``:
    it grows while policies overshoot and decays while they leave budget unused. The
    penalty is ``sum_k lambda_k * max(0, cost_k / limit_k - 1)``.
    """

    initial: float = 1.0
    lr: float = 0.5
    max_multiplier: float = 100.0

    def __post_init__(self) -> None:
        _finite("initial multiplier", self.initial, 0.0)
        _finite("multiplier learning rate", self.lr, 0.0)
        _finite("max_multiplier", self.max_multiplier, self.initial)


@dataclass(frozen=True)
class EnvConfig:
    """How an env handles the budget and shapes its reward.

    Attributes:
        budget_mode: ``mask`` (action masks plus projection keep every episode feasible),
            ``repair`` (the episode runs free; :func:`automl.problem.budget.repair` fixes the final
            policy, recorded in ``info["repair"]``) or ``lagrangian`` (an adaptive penalty).
        reward: the reward's terms.
        lagrangian: the multiplier's schedule (``lagrangian`` mode only).
        cache: wrap the evaluator in a :class:`~automl.problem.cache.CachedEvaluator` unless it is one.
    """

    budget_mode: str = DEFAULT_BUDGET_MODE
    reward: RewardConfig = field(default_factory=RewardConfig)
    lagrangian: LagrangianConfig = field(default_factory=LagrangianConfig)
    cache: bool = True
    schema_version: int = CONFIG_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.budget_mode not in BUDGET_MODES:
            raise ConfigError(
                f"budget_mode must be one of {list(BUDGET_MODES)}, got {self.budget_mode!r}. 'mask' keeps every "
                "episode feasible, 'repair' fixes the final policy, 'lagrangian' penalises overshoot."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvConfig:
        if data.get("schema_version", CONFIG_SCHEMA_VERSION) != CONFIG_SCHEMA_VERSION:
            raise ConfigError(f"env config schema {data.get('schema_version')!r} is not {CONFIG_SCHEMA_VERSION}")
        return cls(
            budget_mode=str(data.get("budget_mode", DEFAULT_BUDGET_MODE)),
            reward=RewardConfig(**dict(data.get("reward", {}))),
            lagrangian=LagrangianConfig(**dict(data.get("lagrangian", {}))),
            cache=bool(data.get("cache", True)),
        )
