"""The price of one policy: size, MACs, BitOps, peak activation memory and latencies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from automl.errors import BudgetError

COSTS_SCHEMA_VERSION = 1
BASE_METRICS = ("size", "macs", "bitops", "peak_act")
METRIC_UNITS = {"size": "B", "macs": "MACs", "bitops": "BitOps", "peak_act": "B", "latency": "ms"}


def latency_metric(profile: str) -> str:
    """The metric key of latency on ``profile`` (``"latency@<profile>"``)."""
    return f"latency@{profile}"


@dataclass(frozen=True)
class Costs:
    """What a policy costs on the analysed model.

    Attributes:
        size_bytes: stored model size (see :mod:`automl.cost.model` for what is counted).
        macs: multiply-accumulates of one forward pass of one sample, after pruning.
        bitops: MACs weighted by weight bits x activation bits (float counts as 32).
        peak_act_bytes: the largest input + output activation pair of a single layer.
        latency_ms: ``(profile name, milliseconds)`` for every profile of the cost model.
    """

    size_bytes: float
    macs: float
    bitops: float
    peak_act_bytes: float
    latency_ms: tuple[tuple[str, float], ...] = ()
    schema_version: int = COSTS_SCHEMA_VERSION

    def value(self, metric: str) -> float:
        """The cost under ``metric``: ``size``, ``macs``, ``bitops``, ``peak_act`` or ``latency@<profile>``."""
        if metric == "size":
            return self.size_bytes
        if metric == "macs":
            return self.macs
        if metric == "bitops":
            return self.bitops
        if metric == "peak_act":
            return self.peak_act_bytes
        if metric.startswith("latency@"):
            profile = metric.split("@", 1)[1]
            for name, ms in self.latency_ms:
                if name == profile:
                    return ms
            known = [n for n, _ in self.latency_ms]
            raise BudgetError(
                f"no latency was priced on profile {profile!r}; this cost model prices {known or 'no profile'}. "
                "Build the CostModel with that profile (profiles=load_profiles([...]))."
            )
        raise BudgetError(
            f"unknown cost metric {metric!r}; expected one of {list(BASE_METRICS)} or 'latency@<profile>'"
        )

    def as_metrics(self) -> dict[str, float]:
        """Every metric key with its value (the keys of :meth:`CostModel.price_batch`)."""
        out = {"size": self.size_bytes, "macs": self.macs, "bitops": self.bitops, "peak_act": self.peak_act_bytes}
        out.update({latency_metric(n): ms for n, ms in self.latency_ms})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "size_bytes": self.size_bytes,
            "macs": self.macs,
            "bitops": self.bitops,
            "peak_act_bytes": self.peak_act_bytes,
            "latency_ms": {n: ms for n, ms in self.latency_ms},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Costs:
        return cls(
            size_bytes=float(data["size_bytes"]),
            macs=float(data["macs"]),
            bitops=float(data["bitops"]),
            peak_act_bytes=float(data["peak_act_bytes"]),
            latency_ms=tuple((str(n), float(ms)) for n, ms in dict(data.get("latency_ms", {})).items()),
            schema_version=int(data.get("schema_version", COSTS_SCHEMA_VERSION)),
        )
