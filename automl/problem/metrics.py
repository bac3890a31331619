"""The result of evaluating one policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from search_spaces.policy import Policy


@dataclass(frozen=True)
class Metrics:
    """Quality of a compressed network on the validation split.

    Attributes:
        accuracy: the task's metric (higher is better; top-1 accuracy for classifiers).
        loss: the task's loss against the targets (``Task.loss``; cross-entropy by default).
        kl: the task's distillation loss from the float model's outputs (``Task.distill_loss``;
            the KL divergence of the softmax distributions by default).
        fidelity: 1 = post-training quantization, 2 = plus BatchNorm re-estimation,
            3 = plus quantization-aware fine-tuning with distillation.
        seconds: wall time of the evaluation.
        stopped_early: the evaluation stopped before the end of the split because its
            running accuracy was clearly below the incumbent's (see
            :mod:`automl.evaluation.early_stop`); the other fields are then measured on the
            ``samples`` scored so far.
        samples: validation samples scored (0 when not recorded).
    """

    accuracy: float
    loss: float
    kl: float
    fidelity: int
    seconds: float = 0.0
    stopped_early: bool = False
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metrics:
        return cls(
            accuracy=float(data["accuracy"]),
            loss=float(data["loss"]),
            kl=float(data["kl"]),
            fidelity=int(data["fidelity"]),
            seconds=float(data.get("seconds", 0.0)),
            stopped_early=bool(data.get("stopped_early", False)),
            samples=int(data.get("samples", 0)),
        )


class PolicyEvaluator(Protocol):
    """What envs and searchers need from an evaluator (a fake in tests)."""

    def evaluate(self, policy: Policy) -> Metrics: ...
