"""Hardware cost models: size, MACs, BitOps, peak activation memory and latency of a policy.

- :mod:`automl.cost.model`: :class:`CostModel` (the pricing conventions are in its docstring).
- :mod:`automl.cost.profiles`: loading and validating hardware profiles; the kinds live in
  :mod:`automl.cost.analytic` (bit-serial accelerator, CPU roofline) and
  :mod:`automl.cost.tabulated` (tables measured by :mod:`automl.export.torch_profile`).
- :mod:`automl.cost.choices`: exact per-layer-decision costs for the integer program.
"""

from automl.cost.batch import LayerBatch
from automl.cost.costs import BASE_METRICS, Costs, latency_metric
from automl.cost.model import CostModel
from automl.cost.profiles import (
    BitSerialProfile,
    HardwareProfile,
    MeasuredLayer,
    MeasuredProfile,
    RooflineProfile,
    load_profile,
    load_profiles,
    profile_from_dict,
    save_profile,
    shipped_profiles,
)

__all__ = [
    "BASE_METRICS",
    "BitSerialProfile",
    "CostModel",
    "Costs",
    "HardwareProfile",
    "LayerBatch",
    "MeasuredLayer",
    "MeasuredProfile",
    "RooflineProfile",
    "latency_metric",
    "load_profile",
    "load_profiles",
    "profile_from_dict",
    "save_profile",
    "shipped_profiles",
]
