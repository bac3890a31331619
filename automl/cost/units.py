"""One unit convention for every size a user reads: kB = 1000 bytes.

Tables on the command line, MLflow metric names (``size_kB``) and plot axes all use the
decimal kilobyte, like the budget grammar's ``KB``/``kB`` (``KiB`` = 1024 B is accepted as
input only). Operation counts are in millions (``bitops_M``, ``macs_M``), latency in ms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from automl.cost.costs import Costs

KB = 1000.0
SIZE_UNIT = "kB"
OPS_SCALE = 1e6  # BitOps and MACs are shown in millions


def shown(value: float) -> float:
    """``value`` rounded to 6 significant digits: what a UI column shows without an ellipsis."""
    return float(f"{value:.6g}")


def kb(nbytes: float) -> float:
    """Bytes in kB (1 kB = 1000 B)."""
    return nbytes / KB


def cost_metrics(costs: Costs, prefix: str = "") -> dict[str, float]:
    """The costs a user compares, under their unit-carrying MLflow metric names."""
    out = {
        f"{prefix}size_kB": kb(costs.size_bytes),
        f"{prefix}bitops_M": costs.bitops / OPS_SCALE,
        f"{prefix}macs_M": costs.macs / OPS_SCALE,
        f"{prefix}peak_act_kB": kb(costs.peak_act_bytes),
    }
    for name, ms in costs.latency_ms:
        out[f"{prefix}latency_ms.{name}"] = ms
    return out


def limit_metrics(limits: Mapping[str, float] | Iterable[tuple[str, float]], prefix: str = "budget_") -> dict[str, float]:
    """Absolute budget limits (``{"size": bytes, "latency@cpu": ms}``) under the names of :func:`cost_metrics`."""
    out = {}
    for metric, value in dict(limits).items():
        if metric in ("size", "peak_act"):
            out[f"{prefix}{metric}_kB"] = kb(value)
        elif metric in ("bitops", "macs"):
            out[f"{prefix}{metric}_M"] = value / OPS_SCALE
        else:
            out[f"{prefix}latency_ms.{metric.split('@', 1)[-1]}"] = value
    return out
