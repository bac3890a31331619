"""What a Pareto sweep produces: the levels it searched, the best point of each method per budget,
and how a policy's kept weights split over bit-widths."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agents.baselines import UniformChoice
from agents.records import SearchResult, TrialRecord
from automl.cost import CostModel
from automl.pareto.config import ParetoConfig
from automl.problem.budget import BoundBudget
from automl.runs.sensitivity_stage import SensitivityReport
from search_spaces.policy import FLOAT_BITS, Policy

METHODS = ("mixed", "uniform", "uniform+pruning")


@dataclass(frozen=True)
class WeightShares:
    """How a policy's kept weights split over bit-widths (pinned layers included).

    Attributes:
        shares: bit-width -> share of the kept weights stored at it (sums to 1).
        mean_bits: mean bits per kept weight (weighted by weight count, unlike
            :meth:`Policy.mean_weight_bits`, which averages channels).
        pruned: share of the float model's weights removed by pruning.
    """

    shares: dict[int, float]
    mean_bits: float
    pruned: float

    @property
    def dominant(self) -> int:
        """The bit-width holding the largest share of the kept weights."""
        return max(self.shares, key=lambda b: (self.shares[b], -b))

    def text(self) -> str:
        return " ".join(f"{b}b:{s:.0%}" for b, s in sorted(self.shares.items()) if s > 0)


def weight_shares(cost_model: CostModel, policy: Policy) -> WeightShares:
    """:class:`WeightShares` of ``policy``, counted with the cost model's channel coupling."""
    bits, act = cost_model.policy_arrays(policy)
    batch = cost_model.layer_batch(bits[None, :].astype(np.int64), act[None, :])
    per_bit = (batch.bit_histogram[0] * batch.weights_per_out[0][:, None]).sum(axis=0)
    per_bit[0] = 0.0
    full = cost_model.layer_batch(np.full_like(bits[None, :], FLOAT_BITS, dtype=np.int64), act[None, :])
    total = float((full.weights_per_out[0] * full.kept_out[0]).sum())
    kept = float(per_bit.sum())
    shares = {b: float(per_bit[b] / kept) for b in range(1, FLOAT_BITS + 1) if per_bit[b] > 0} if kept else {}
    mean = float((per_bit * np.arange(FLOAT_BITS + 1)).sum() / kept) if kept else 0.0
    return WeightShares(shares, mean, 1.0 - kept / total if total else 0.0)


@dataclass(frozen=True)
class Level:
    """One budget of the sweep and what its search did."""

    index: int
    text: str
    bound: BoundBudget
    result: SearchResult
    run_id: str | None

    @property
    def limit(self) -> float:
        return float(self.bound.limits[0][1])


@dataclass(frozen=True)
class FrontPoint:
    """The best policy of one method within one budget (``policy`` is ``None`` when none fits)."""

    budget: str
    limit: float
    method: str
    label: str
    policy: Policy | None
    cost: float
    val_accuracy: float
    test_accuracy: float = math.nan
    finetune_steps: int = 0
    shares: WeightShares | None = None
    found_at: str = ""


@dataclass
class ParetoResult:
    """What a sweep produced; the files it wrote are under :attr:`sweep_dir`."""

    config: ParetoConfig
    sweep_dir: Path
    levels: list[Level]
    uniform: list[tuple[UniformChoice, float]]  # (choice with costs, val accuracy)
    points: list[FrontPoint]
    sensitivity: SensitivityReport
    float_val: float
    float_cost: float
    skipped: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    parent_run_id: str | None = None

    @property
    def records(self) -> list[TrialRecord]:
        return [r for lv in self.levels for r in lv.result.records]

    def front(self, method: str) -> list[FrontPoint]:
        return [p for p in self.points if p.method == method]
