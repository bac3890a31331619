"""Fakes for tests and benchmarks: evaluators that need no network and no data."""

from __future__ import annotations

import time

from automl.problem.metrics import Metrics
from search_spaces.policy import FLOAT_BITS, Policy


class FakeEvaluator:
    """A deterministic stand-in for :class:`~automl.evaluation.evaluator.Evaluator`.

    Accuracy falls with fewer weight and activation bits and with pruning: each layer
    loses ``4 ** (2 - bits)`` per quantized operand (0 at float) times its share of the
    channels, plus its pruned share, and ``accuracy = float_accuracy * exp(-damage / L)``.

    Args:
        float_accuracy: the accuracy of the float model (what :meth:`baseline` reports).
        delay: seconds every evaluation sleeps, to stand in for a real evaluator's cost.
    """

    fidelity = 1

    def __init__(self, float_accuracy: float = 0.9, delay: float = 0.0) -> None:
        self.float_accuracy = float_accuracy
        self.delay = delay
        self.n_evaluations = 0

    def _damage(self, policy: Policy) -> float:
        total = 0.0
        for _, lp in policy:
            n = len(lp.weight_bits)
            act = 0.0 if lp.act_bits >= FLOAT_BITS else 4.0 ** (2 - lp.act_bits)
            for b in lp.weight_bits:
                total += (1.0 if b == 0 else (0.0 if b >= FLOAT_BITS else 4.0 ** (2 - b)) + act) / n
        return total / max(len(policy), 1)

    def evaluate(self, policy: Policy, fidelity: int | None = None) -> Metrics:
        if self.delay:
            time.sleep(self.delay)
        self.n_evaluations += 1
        damage = self._damage(policy)
        accuracy = self.float_accuracy * float(2.718281828459045 ** (-damage))
        return Metrics(accuracy=accuracy, loss=damage, kl=damage, fidelity=fidelity or self.fidelity)

    def baseline(self) -> Metrics:
        return Metrics(accuracy=self.float_accuracy, loss=0.0, kl=0.0, fidelity=0)
