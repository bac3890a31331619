"""Budgets: hardware constraints a searched policy must meet.

A budget is one or more constraints, each ``<metric> <= <limit>``, absolute or relative to
the float model::

    size<=0.125x          size<=0.2MB         peak_act<=64KiB
    bitops<=0.5G          macs<=0.6x          latency<=2ms@bitserial
    latency@accel_roofline<=40%                 latency<=1.5ms@./my_profile.yaml

:meth:`Budget.bind` resolves it against a :class:`~automl.cost.CostModel` and refuses a
budget that even the cheapest policy of the search space cannot meet. The exact optimum of
the separable proxy (:func:`solve_ilp`) and the repair of infeasible policies
(:func:`repair`) live in :mod:`automl.problem.ilp` and :mod:`automl.problem.repair` and are re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl.errors import BudgetError, InfeasibleBudget

if TYPE_CHECKING:  # numpy and the cost package (torch) load on use; parsing a budget needs neither
    import numpy as np

    from automl.cost import CostModel, Costs, HardwareProfile
    from search_spaces.space import SearchSpace

BUDGET_SCHEMA_VERSION = 1
TOLERANCE = 1e-9  # relative slack on every limit, for floating-point sums
GRAMMAR = """budget grammar: <metric> <= <limit>[@<profile>], several separated by commas
  metric:  size | peak_act (bytes) | macs | bitops | latency (needs a profile)
  limit:   <number>x or <number>% (relative to the float model), or an absolute value
           size, peak_act: B, kB (= KB), MB, GB (x1000) or KiB, MiB, GiB (x1024); default B
           macs, bitops:   K, M, G, T (x1000); default none
           latency:        us, ms, s; default ms
  profile: ort-cpu / ort-cpu-b<N> (ONNX Runtime on this CPU, measured once), a shipped model of a hypothetical accelerator (bitserial, bitserial_shift, accel_roofline, sparse_accel) or the path of a profile YAML
  examples: size<=0.125x   size<=0.2MB   bitops<=0.5G   macs<=0.6x   latency<=0.5x@ort-cpu   latency<=2ms@bitserial"""

_METRICS = ("size", "macs", "bitops", "peak_act", "latency")
_BYTES = {"": 1, "B": 1, "KB": 1e3, "kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_COUNTS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_UNITS = {
    "size": _BYTES, "peak_act": _BYTES, "macs": _COUNTS, "bitops": _COUNTS,
    "latency": {"": 1, "us": 1e-3, "ms": 1, "s": 1e3},
}
_PATTERN = re.compile(
    r"^\s*(?P<metric>[A-Za-z_]+)(?:@(?P<p1>[^<=\s]+))?\s*<=\s*"
    r"(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>[A-Za-z%]*)\s*(?:@\s*(?P<p2>\S+))?\s*$"
)


def _malformed(text: str, why: str) -> BudgetError:
    return BudgetError(f"cannot read the budget {text!r}: {why}.\n{GRAMMAR}")


@dataclass(frozen=True)
class Constraint:
    """One constraint ``metric <= limit``.

    Attributes:
        metric: ``size``, ``macs``, ``bitops``, ``peak_act`` or ``latency@<profile>`` (the
            profile as written: a shipped name or a YAML path).
        limit: bytes, MACs, BitOps or milliseconds; a fraction of the float model's cost
            when ``relative``.
        relative: whether ``limit`` is a fraction of the float model's cost.
        text: the constraint as the user wrote it.
    """

    metric: str
    limit: float
    relative: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """Read one constraint string (see :data:`GRAMMAR`)."""
        m = _PATTERN.match(text)
        if not m:
            raise _malformed(text, "expected '<metric> <= <limit>'")
        metric = m["metric"].lower()
        if metric not in _METRICS:
            raise _malformed(text, f"unknown metric {m['metric']!r}")
        if m["p1"] and m["p2"]:
            raise _malformed(text, "the profile is given twice")
        profile = m["p1"] or m["p2"]
        if metric == "latency" and not profile:
            raise _malformed(text, "a latency limit needs a profile: latency<=2ms@ort-cpu (ONNX Runtime on this CPU, measured "
                                   "once) or a modelled accelerator such as latency<=2ms@bitserial")
        if metric != "latency" and profile:
            raise _malformed(text, f"only latency takes a profile, not {metric}")
        value, unit = float(m["num"]), m["unit"].lower()
        scales = {u.lower(): f for u, f in _UNITS[metric].items()}
        if unit in ("x", "%"):
            limit, relative = (value / 100 if unit == "%" else value), True
        elif unit in scales:
            limit, relative = value * scales[unit], False
        else:
            units = ", ".join(u for u in _UNITS[metric] if u)
            raise _malformed(text, f"unit {m['unit']!r} does not fit {metric} (units: {units}, x, %)")
        if not limit > 0 or limit == float("inf"):  # 1e999 (or 1e308 GB) overflows to inf
            raise _malformed(text, "the limit must be positive (and finite)")
        return cls(f"latency@{profile}" if metric == "latency" else metric, limit, relative, text.strip())

    @property
    def profile(self) -> str | None:
        """The profile reference of a latency constraint, else ``None``."""
        return self.metric.split("@", 1)[1] if self.metric.startswith("latency@") else None

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "limit": self.limit, "relative": self.relative, "text": self.text}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Constraint:
        return cls(str(data["metric"]), float(data["limit"]), bool(data["relative"]), str(data["text"]))


def format_value(metric: str, value: float) -> str:
    """``value`` of ``metric`` in a readable unit (``0.031 MB``, ``1.2 GBitOps``, ``2.10 ms``); kB = 1000 B."""
    if metric.startswith("latency"):
        return f"{value:.4g} ms"
    if metric in ("size", "peak_act"):
        for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if value >= scale:
                return f"{value / scale:.4g} {unit}"
        return f"{value:.4g} B"
    label = "MACs" if metric == "macs" else "BitOps"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.4g} {unit}{label}"
    return f"{value:.4g} {label}"


@dataclass(frozen=True)
class Budget:
    """One or more constraints, as the user wrote them."""

    constraints: tuple[Constraint, ...]
    schema_version: int = BUDGET_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.constraints:
            raise BudgetError(f"a budget needs at least one constraint, got none.\n{GRAMMAR}")

    @classmethod
    def parse(cls, texts: str | Sequence[str]) -> Budget:
        """Read constraints from a string (comma- or semicolon-separated) or a list of strings."""
        items = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for item in items:
            if not isinstance(item, str):
                raise _malformed(str(item), f"expected a string, got {type(item).__name__}")
            out.extend(Constraint.parse(part) for part in re.split(r"[,;]", item) if part.strip())
        return cls(tuple(out))

    @property
    def profile_refs(self) -> tuple[str, ...]:
        """The hardware profiles the latency constraints name (shipped names or paths)."""
        return tuple(dict.fromkeys(c.profile for c in self.constraints if c.profile))

    def load_profiles(self) -> tuple[HardwareProfile, ...]:
        """Load the profiles of :attr:`profile_refs` (pass them to the :class:`CostModel`)."""
        from automl.cost import load_profiles

        return load_profiles(self.profile_refs)

    def bind(self, cost_model: CostModel) -> BoundBudget:
        """Resolve relative limits against the float model and check feasibility.

        Raises:
            BudgetError: a latency constraint names a profile the cost model does not price.
            InfeasibleBudget: even the cheapest policy of the space exceeds a constraint.
        """
        float_costs = cost_model.float_costs()
        limits: dict[str, float] = {}
        resolved = []
        for c in self.constraints:
            metric = _canonical(c, cost_model)
            limit = c.limit * float_costs.value(metric) if c.relative else c.limit
            limits[metric] = min(limit, limits.get(metric, float("inf")))
            resolved.append((c, metric, limit))
        bound = BoundBudget(self, tuple(limits.items()))
        costs = cost_model.lowest_costs()
        if not bound.feasible(costs):
            raise InfeasibleBudget(_infeasible_message(resolved, costs, cost_model.space))
        return bound

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "constraints": [c.to_dict() for c in self.constraints]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budget:
        if data.get("schema_version") != BUDGET_SCHEMA_VERSION:
            raise BudgetError(f"budget schema {data.get('schema_version')!r} is not {BUDGET_SCHEMA_VERSION}")
        return cls(tuple(Constraint.from_dict(c) for c in data["constraints"]))


def _canonical(c: Constraint, cost_model: CostModel) -> str:
    """The cost model's metric key for ``c`` (latency profiles by name, paths resolved)."""
    ref = c.profile
    if ref is None:
        return c.metric
    names = [p.name for p in cost_model.profiles]
    if ref in names:
        return f"latency@{ref}"
    if Path(ref).is_file():
        from automl.cost import load_profile

        name = load_profile(ref).name
        if name in names:
            return f"latency@{name}"
    raise BudgetError(
        f"the budget {c.text!r} needs hardware profile {ref!r}, but the cost model prices "
        f"{names or 'no profile'}. Build the CostModel with profiles=budget.load_profiles()."
    )


def _infeasible_message(resolved: list[tuple[Constraint, str, float]], costs: Costs, space: SearchSpace) -> str:
    cfg = space.config
    free = [s for s in space.layers if not s.pinned]
    lines = []
    violated = set()
    for c, metric, limit in resolved:
        value = costs.value(metric)
        if value > limit * (1 + TOLERANCE):
            violated.add(metric.split("@")[0])
            lines.append(
                f"{c.text} cannot be met: the cheapest policy in this space costs {format_value(metric, value)} "
                f"(limit {format_value(metric, limit)}, {value / limit:.2f}x over)"
            )
    wbits = min((s.nonzero_bits[0] for s in free), default=cfg.pinned_bits)
    abits = min((s.act_bits[0] for s in free), default=cfg.pinned_bits)
    desc = (
        f"the cheapest policy has every free layer at {wbits}-bit weights and {abits}-bit activations"
        + (f" with up to {cfg.max_sparsity:.0%} of channels pruned" if cfg.allow_pruning else ", nothing pruned")
    )
    pinned = [s.name for s in space.layers if s.pinned]
    if pinned:
        desc += f", and {len(pinned)} pinned layers ({', '.join(pinned[:4])}{', ...' if len(pinned) > 4 else ''}) at {cfg.pinned_bits} bits"
    fixes = ["raise the budget"]
    if not cfg.allow_pruning:
        fixes.append("allow pruning (allow_pruning=True, i.e. 0-bit channels)")
    elif cfg.max_sparsity < 0.9:
        fixes.append(f"allow more pruning (max_sparsity above {cfg.max_sparsity})")
    if wbits > 2 and violated & {"size", "bitops", "latency"}:
        fixes.append(f"lower the minimum weight bits (now {wbits})")
    if abits > 2 and violated & {"bitops", "latency", "peak_act"}:
        fixes.append(f"lower the minimum activation bits (now {abits})")
    if pinned:
        fixes.append(f"unpin layers or lower pinned_bits (now {cfg.pinned_bits})")
    return "; ".join(lines) + f". ({desc}.) To make it feasible: " + ", or ".join(fixes) + "."


@dataclass(frozen=True)
class BoundBudget:
    """A budget resolved against one cost model: absolute limits per metric.

    Attributes:
        budget: the constraints as written.
        limits: ``(metric, absolute limit)`` with the cost model's metric keys; several
            constraints on one metric are merged into the tightest.
    """

    budget: Budget
    limits: tuple[tuple[str, float], ...]

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.limits)

    def feasible(self, costs: Costs) -> bool:
        """Whether ``costs`` meet every limit."""
        return all(costs.value(m) <= lim * (1 + TOLERANCE) for m, lim in self.limits)

    def feasible_batch(self, table: Mapping[str, np.ndarray]) -> np.ndarray:
        """``[n]`` bool: which rows of a :meth:`CostModel.price_batch` table meet every limit."""
        import numpy as np

        ok = None
        for m, lim in self.limits:
            row = np.asarray(table[m]) <= lim * (1 + TOLERANCE)
            ok = row if ok is None else ok & row
        return ok if ok is not None else np.ones(0, dtype=bool)

    def violations(self, costs: Costs) -> dict[str, float]:
        """metric -> ``value / limit - 1`` for every exceeded limit."""
        out = {}
        for m, lim in self.limits:
            excess = costs.value(m) / lim - 1
            if excess > TOLERANCE:
                out[m] = excess
        return out

    def normalised(self, costs: Costs) -> dict[str, float]:
        """metric -> ``value / limit`` (1.0 = exactly at the limit)."""
        return {m: costs.value(m) / lim for m, lim in self.limits}

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget.to_dict(), "limits": dict(self.limits)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BoundBudget:
        return cls(Budget.from_dict(data["budget"]), tuple((str(m), float(v)) for m, v in data["limits"].items()))


_LAZY = {
    "repair": "automl.problem.repair", "RepairRecord": "automl.problem.repair",
    "solve_ilp": "automl.problem.ilp", "solve_ilp_detailed": "automl.problem.ilp", "IlpResult": "automl.problem.ilp",
}


def __getattr__(name: str) -> Any:
    # automl.problem.repair and automl.problem.ilp import this module, so they are re-exported lazily.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'automl.problem.budget' has no attribute {name!r}")
