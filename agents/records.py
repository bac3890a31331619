"""What a search produces: one :class:`TrialRecord` per evaluated policy and one :class:`SearchResult`.

Both are frozen dataclasses with a JSON round trip (``to_dict`` / ``from_dict``), so a
search can be logged, resumed from a file and compared across searchers. A record carries
everything needed to judge a policy without re-running anything: the policy the network
ran with, the policy the searcher proposed (they differ when the budget repaired it), the
metrics, the costs and whether the costs meet the budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from automl.cost.costs import Costs
from automl.errors import ConfigError
from automl.problem.budget import TOLERANCE
from automl.problem.metrics import Metrics
from automl.problem.repair import RepairRecord
from search_spaces.policy import LayerPolicy, Policy

RECORD_SCHEMA_VERSION = 1
RESULT_SCHEMA_VERSION = 1


def repair_from_dict(data: Mapping[str, Any]) -> RepairRecord:
    """Read back :meth:`RepairRecord.to_dict` (the budget module writes it; records read it)."""

    def lp(d: Mapping[str, Any]) -> LayerPolicy:
        return LayerPolicy(int(d["act_bits"]), tuple(int(b) for b in d["weight_bits"]), str(d.get("nm", "")))

    return RepairRecord(
        changed=bool(data["changed"]),
        changes=tuple((str(c["layer"]), lp(c["before"]), lp(c["after"])) for c in data.get("changes", ())),
        steps=tuple(str(s) for s in data.get("steps", ())),
        before=None if data.get("before") is None else Costs.from_dict(data["before"]),
        after=None if data.get("after") is None else Costs.from_dict(data["after"]),
        proxy_increase=float(data.get("proxy_increase", 0.0)),
        violations=tuple((str(m), float(v)) for m, v in dict(data.get("violations", {})).items()),
    )


@dataclass(frozen=True)
class TrialRecord:
    """One evaluated policy.

    Attributes:
        number: position of the trial in its search (the Optuna trial number for Optuna
            searchers, so records of several workers sharing a study never collide).
        policy: the policy that was evaluated and priced.
        proposed: the policy the searcher proposed; equal to ``policy`` unless repaired.
        metrics: the evaluator's verdict on ``policy``.
        costs: the cost model's price of ``policy``.
        feasible: whether ``costs`` meet every limit of the budget.
        repair: how the budget module changed ``proposed`` into ``policy``, or ``None``.
        searcher: name of the searcher that proposed the policy.
        seconds: wall time of pricing, repairing and evaluating.
        cache_hit: ``policy`` had been evaluated before in this search (or a resumed
            one): the metrics are the cached ones and the trial did not spend the
            evaluation budget, which counts distinct policies.
    """

    number: int
    policy: Policy
    proposed: Policy
    metrics: Metrics
    costs: Costs
    feasible: bool
    repair: RepairRecord | None = None
    searcher: str = ""
    seconds: float = 0.0
    cache_hit: bool = False
    schema_version: int = RECORD_SCHEMA_VERSION

    @property
    def accuracy(self) -> float:
        return self.metrics.accuracy

    @property
    def repaired(self) -> bool:
        return self.repair is not None

    def cost(self, metric: str) -> float:
        """The price of :attr:`policy` under ``metric`` (see :meth:`Costs.value`)."""
        return self.costs.value(metric)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "number": self.number,
            "policy": self.policy.to_dict(),
            # A repaired trial needs both; an unrepaired one stores the policy once.
            "proposed": None if self.proposed == self.policy else self.proposed.to_dict(),
            "metrics": self.metrics.to_dict(),
            "costs": self.costs.to_dict(),
            "feasible": self.feasible,
            "repair": None if self.repair is None else self.repair.to_dict(),
            "searcher": self.searcher,
            "seconds": self.seconds,
            "cache_hit": self.cache_hit,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        version = data.get("schema_version")
        if version != RECORD_SCHEMA_VERSION:
            raise ConfigError(
                f"trial record schema version {version!r} is not supported; expected {RECORD_SCHEMA_VERSION}. "
                "Re-run the search with this version of automl-mpq."
            )
        policy = Policy.from_dict(data["policy"])
        return cls(
            number=int(data["number"]),
            policy=policy,
            proposed=policy if data.get("proposed") is None else Policy.from_dict(data["proposed"]),
            metrics=Metrics.from_dict(data["metrics"]),
            costs=Costs.from_dict(data["costs"]),
            feasible=bool(data["feasible"]),
            repair=None if data.get("repair") is None else repair_from_dict(data["repair"]),
            searcher=str(data.get("searcher", "")),
            seconds=float(data.get("seconds", 0.0)),
            cache_hit=bool(data.get("cache_hit", False)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TrialRecord:
        return cls.from_dict(json.loads(text))


def _meets(record: TrialRecord, limits: Mapping[str, float]) -> bool:
    return all(record.cost(metric) <= limit * (1 + TOLERANCE) for metric, limit in limits.items())


def best_record(records: Iterable[TrialRecord], limits: Mapping[str, float] | None = None) -> TrialRecord | None:
    """The most accurate feasible record at the highest fidelity present (ties: smaller size, then earlier trial).

    Args:
        records: evaluated trials.
        limits: metric -> absolute limit. ``None`` uses each record's own ``feasible``
            flag (the search's budget); a mapping judges the recorded costs against other
            limits, so one search answers for several budgets.
    """
    pool = [r for r in records if (r.feasible if limits is None else _meets(r, limits))]
    pool = [r for r in pool if math.isfinite(r.accuracy)]
    if not pool:
        return None
    # A multi-fidelity search stops unpromising trials at a cheap score; only records scored
    # at the search's own (highest) fidelity compete.
    top = max(r.metrics.fidelity for r in pool)
    pool = [r for r in pool if r.metrics.fidelity == top]
    return max(pool, key=lambda r: (r.accuracy, -r.costs.size_bytes, -r.number))


def pareto_front(records: Iterable[TrialRecord], metrics: Sequence[str]) -> tuple[TrialRecord, ...]:
    """Records not dominated in (accuracy up, every cost in ``metrics`` down).

    Of several records with identical accuracy and costs only the earliest is kept. The
    front is sorted by the first metric.
    """
    pts = sorted(
        ((r, (-r.accuracy, *(r.cost(m) for m in metrics))) for r in records if math.isfinite(r.accuracy)),
        key=lambda rp: (rp[1], rp[0].number),
    )
    front: list[tuple[TrialRecord, tuple[float, ...]]] = []
    for r, p in pts:
        # Sorted lexicographically, no later point can dominate an earlier one.
        if any(all(a <= b for a, b in zip(q, p, strict=True)) for _, q in front):
            continue
        front.append((r, p))
    return tuple(sorted((r for r, _ in front), key=lambda r: (r.cost(metrics[0]) if metrics else 0.0, r.number)))


@dataclass(frozen=True)
class SearchResult:
    """Every evaluated policy of one search, the best feasible one and the Pareto front.

    Attributes:
        searcher: name of the searcher.
        records: evaluated trials in trial-number order.
        limits: the budget as ``(metric, absolute limit)`` pairs; every limit must hold.
        budget: the budget as the user wrote it (``"size<=0.125x"``), for reports.
        wall_seconds: wall time of the search (summed over resumed sessions).
        seed: the searcher's seed.
        sensitivity_evaluations: what the search's sensitivity tables cost, in evaluations
            (counted once, also when a resumed search read them from the cache).
        stop_reason: why the search ended before its budget was spent (a callback asked
            to stop, the searcher kept proposing evaluated policies), empty otherwise.
    """

    searcher: str
    records: tuple[TrialRecord, ...]
    limits: tuple[tuple[str, float], ...] = ()
    budget: tuple[str, ...] = ()
    wall_seconds: float = 0.0
    seed: int | None = None
    sensitivity_evaluations: int = 0
    stop_reason: str = ""
    schema_version: int = RESULT_SCHEMA_VERSION

    def __post_init__(self) -> None:
        numbers = [r.number for r in self.records]
        if len(set(numbers)) != len(numbers):
            raise ConfigError(f"a search result lists a trial number twice: {sorted(numbers)}")

    @property
    def n_evaluations(self) -> int:
        """Distinct policies evaluated: what the evaluation budget counts (cache hits excluded)."""
        return sum(1 for r in self.records if not r.cache_hit)

    @property
    def n_proposed(self) -> int:
        """Every trial, cache hits included."""
        return len(self.records)

    @property
    def n_cache_hits(self) -> int:
        return sum(1 for r in self.records if r.cache_hit)

    @property
    def n_stopped_early(self) -> int:
        return sum(1 for r in self.records if r.metrics.stopped_early and not r.cache_hit)

    @property
    def eval_seconds(self) -> float:
        """Seconds the distinct evaluations took (the evaluator's own timing)."""
        return sum(r.metrics.seconds for r in self.records if not r.cache_hit)

    @property
    def best(self) -> TrialRecord | None:
        """The most accurate record whose policy meets the budget; ``None`` if none does."""
        return best_record(self.records)

    @property
    def best_policy(self) -> Policy | None:
        best = self.best
        return None if best is None else best.policy

    def best_for(self, limits: Mapping[str, float]) -> TrialRecord | None:
        """The most accurate record whose recorded costs meet other ``limits`` (metric -> absolute)."""
        return best_record(self.records, limits)

    @property
    def cost_metrics(self) -> tuple[str, ...]:
        """The cost metrics priced for these records (``size``, ``bitops``, ``latency@...``)."""
        return tuple(self.records[0].costs.as_metrics()) if self.records else ()

    def pareto_front(self, metrics: Sequence[str] | None = None, feasible_only: bool = False) -> tuple[TrialRecord, ...]:
        """Records not dominated in accuracy and the cost ``metrics`` (the budget's metrics by default).

        Args:
            metrics: cost metrics to trade accuracy against, e.g. ``("size", "bitops")``.
            feasible_only: restrict the front to records that meet the budget.
        """
        metrics = tuple(metrics) if metrics is not None else tuple(m for m, _ in self.limits) or ("size",)
        pool = [r for r in self.records if r.feasible] if feasible_only else list(self.records)
        return pareto_front(pool, metrics)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``best`` and ``pareto`` (trial numbers, one 2-D front per metric) are derived."""
        best = self.best
        return {
            "schema_version": self.schema_version,
            "searcher": self.searcher,
            "budget": list(self.budget),
            "limits": {m: v for m, v in self.limits},
            "seed": self.seed,
            "wall_seconds": self.wall_seconds,
            "n_evaluations": self.n_evaluations,
            "sensitivity_evaluations": self.sensitivity_evaluations,
            "n_proposed": self.n_proposed,
            "n_cache_hits": self.n_cache_hits,
            "stop_reason": self.stop_reason,
            "best": None if best is None else best.number,
            "pareto": {m: [r.number for r in self.pareto_front((m,))] for m in self.cost_metrics},
            "records": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchResult:
        version = data.get("schema_version")
        if version != RESULT_SCHEMA_VERSION:
            raise ConfigError(
                f"search result schema version {version!r} is not supported; expected {RESULT_SCHEMA_VERSION}"
            )
        return cls(
            searcher=str(data["searcher"]),
            records=tuple(TrialRecord.from_dict(r) for r in data["records"]),
            limits=tuple((str(m), float(v)) for m, v in dict(data.get("limits", {})).items()),
            budget=tuple(str(b) for b in data.get("budget", ())),
            wall_seconds=float(data.get("wall_seconds", 0.0)),
            seed=None if data.get("seed") is None else int(data["seed"]),
            sensitivity_evaluations=int(data.get("sensitivity_evaluations", 0)),
            stop_reason=str(data.get("stop_reason", "")),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SearchResult:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"a search result file must be JSON: {exc}") from exc
