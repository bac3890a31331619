"""The exact optimum of the separable proxy under a budget, by integer programming.

N:M sparsity (``SpaceConfig.nm_patterns``) is not a choice here: the sensitivity tables
have no N:M axis, so every layer of the program's policy is dense (always allowed).

Decision variables (all binary but the latency epigraph variables):

- ``y[g, s]``: coupled channel group ``g`` is pruned at sparsity level ``s``. All producers of
  a group share one level, because the network prunes the union of their channels anyway.
- ``x[l, k]``: layer ``l`` takes choice ``k`` = (its output group's level, its input group's
  level, uniform weight bits, activation bits). Consistency rows tie the two levels to the
  ``y`` of the groups, so a layer's cost, which depends on both (a pruned producer shrinks
  its consumers' inputs), is exact and linear in ``x``.
- ``t[p, l]`` (continuous): latency of layer ``l`` on profile ``p``, bounded below by the
  profile's ``compute + overhead`` and ``memory + output write + overhead`` terms; the
  output write depends on the activation bits of the reading layers, which enter through
  their own ``x``. The profile's ``max(...)`` is thereby exact.

Size, MACs and BitOps are sums over layers (plus full-precision followers on ``y``), peak
activation memory is one row per (layer, reader) pair. With every layer reading at most one
prunable group (true of chains, residual networks and depthwise blocks), the program prices
exactly what :meth:`CostModel.price` prices for the decoded policy (a test checks it against
exhaustive search). A layer reading several prunable groups (a concatenation) is priced as
if its inputs were unpruned, and coupled producers that rank their channels differently
prune a union larger than the shared level: both only make the program's costs upper
bounds. The result is still re-priced with :meth:`CostModel.price`, and should a future
profile break these assumptions and the exact price exceed a limit, the violated limits are
tightened by the excess and the program re-solved (``IlpResult.rounds``, ``notes``).
Solved by HiGHS through :func:`scipy.optimize.milp`; the objective and the byte and BitOps
rows are scaled to order one for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from automl.cost import CostModel
from automl.cost.choices import ChoiceTable, build_choices
from automl.errors import AutoMLError, InfeasibleBudget
from automl.problem.budget import BoundBudget
from automl.problem.sensitivity import Sensitivities, SensitivityFn, as_sensitivities
from search_spaces.policy import FLOAT_BITS, Policy
from search_spaces.space import SearchSpace


@dataclass(frozen=True)
class IlpResult:
    """The program's answer.

    Attributes:
        policy: the optimal policy (uniform weight bits per layer, shared level per group).
        objective: its proxy objective (sum of sensitivities).
        status: ``optimal``, or ``time_limit`` when HiGHS stopped with a feasible incumbent.
        rounds: programs solved (more than 1 when a re-priced result had to be tightened).
        variables: binary variables after dominance filtering.
    """

    policy: Policy
    objective: float
    status: str
    rounds: int
    variables: int
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.to_dict(), "objective": self.objective, "status": self.status,
            "rounds": self.rounds, "variables": self.variables, "notes": list(self.notes),
        }


class _Rows:
    """Sparse constraint rows ``lb <= A x <= ub`` built one at a time."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.lb: list[float] = []
        self.ub: list[float] = []

    def add(self, terms: list[tuple[np.ndarray, np.ndarray]], lb: float, ub: float, scale: float = 1.0) -> None:
        """Add one row; ``scale`` divides it (rows of bytes or BitOps are divided by their limit,
        so that every coefficient HiGHS sees is of order one)."""
        r = len(self.lb)
        for cols, vals in terms:
            self.rows.append(np.full(len(cols), r))
            self.cols.append(np.asarray(cols, dtype=np.int64))
            self.vals.append(np.asarray(vals, dtype=float) / scale)
        self.lb.append(lb / scale)
        self.ub.append(ub / scale)

    def constraint(self, n: int) -> LinearConstraint:
        data = (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols)))
        a = sparse.csr_array(data, shape=(len(self.lb), n))
        return LinearConstraint(a, np.array(self.lb), np.array(self.ub))


class _Program:
    def __init__(self, table: ChoiceTable, cost_model: CostModel, limits: dict[str, float]) -> None:
        self.t = table
        self.cm = cost_model
        self.limits = limits
        self.n = table.n_x + len(table.y_index)
        self.latency = [p for p in cost_model.profiles if f"latency@{p.name}" in limits]
        self.t_base = self.n
        self.n += len(self.latency) * len(table.layers)

    def x_cols(self, li: int) -> np.ndarray:
        c = self.t.layers[li]
        return np.arange(c.col0, c.col0 + c.k)

    def build(self) -> list[LinearConstraint]:
        rows = _Rows()
        for li in range(len(self.t.layers)):
            rows.add([(self.x_cols(li), np.ones(self.t.layers[li].k))], 1.0, 1.0)
        self._consistency(rows)
        self._sums(rows)
        if "peak_act" in self.limits:
            self._peak(rows)
        for pi, p in enumerate(self.latency):
            self._latency(rows, pi, p)
        return [rows.constraint(self.n)]

    def _consistency(self, rows: _Rows) -> None:
        for li, c in enumerate(self.t.layers):
            ties = [(c.lo, c.g_out)] + ([(c.li, c.g_in)] if c.g_in is not None and c.g_in != c.g_out else [])
            for levels, gid in ties:
                if len(self.t.group_levels[gid]) < 2:
                    continue
                for lv in self.t.group_levels[gid]:
                    sel = np.flatnonzero(levels == lv)
                    terms = [(self.x_cols(li)[sel], np.ones(sel.size)), (np.array([self.t.y_index[gid, lv]]), np.array([-1.0]))]
                    rows.add(terms, 0.0, 0.0)

    def _sums(self, rows: _Rows) -> None:
        for metric in ("size", "macs", "bitops"):
            if metric not in self.limits:
                continue
            terms = [(self.x_cols(li), c.cost[metric]) for li, c in enumerate(self.t.layers)]
            const = 0.0
            if metric == "size":
                const = self.cm.fixed_size_bits / 8.0
                for (gid, lv), col in self.t.y_index.items():
                    terms.append((np.array([col]), np.array([self.t.follower_bytes[gid, lv]])))
                const += sum(self.t.follower_bytes[gid, lvs[0]] for gid, lvs in self.t.group_levels.items() if len(lvs) == 1)
            rows.add(terms, -np.inf, self.limits[metric] - const, scale=self.limits[metric])

    def _reader_term(self, li: int, ci: int, fn: Any) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients on reader ``ci``'s choices of ``fn(output elements of li, reader's act bits)``."""
        c = self.t.layers[ci]
        # The reader's input level is the source's output level when it reads that group alone;
        # otherwise the source's group has one level (0.0) or the reader concatenates (upper bound).
        levels = c.li if c.g_in is not None and c.g_in == self.t.layers[li].g_out else np.zeros(c.k)
        elems = np.array([self.t.out_elems(li, lv) for lv in levels])
        return self.x_cols(ci), fn(elems, c.ab)

    def _peak(self, rows: _Rows) -> None:
        limit = self.limits["peak_act"]
        for li, c in enumerate(self.t.layers):
            mine = (self.x_cols(li), c.cost["in_bits"] / 8.0)
            readers = self.cm.consumers[li]
            if not readers:
                out = np.array([self.t.out_elems(li, lv) for lv in c.lo]) * FLOAT_BITS / 8.0
                rows.add([(self.x_cols(li), c.cost["in_bits"] / 8.0 + out)], -np.inf, limit, scale=limit)
            for ci in readers:
                rows.add([mine, self._reader_term(li, ci, lambda e, a: e * a / 8.0)], -np.inf, limit, scale=limit)

    def _latency(self, rows: _Rows, pi: int, profile: Any) -> None:
        t0 = self.t_base + pi * len(self.t.layers)
        key = profile.name
        for li, c in enumerate(self.t.layers):
            tcol = (np.array([t0 + li]), np.array([-1.0]))
            over = c.cost[f"{key}:overhead"]
            rows.add([(self.x_cols(li), c.cost[f"{key}:compute"] + over), tcol], -np.inf, 0.0)
            mem = c.cost[f"{key}:memory"] + over
            readers = self.cm.consumers[li]
            if not readers:
                out = profile.output_ms(np.array([self.t.out_elems(li, lv) for lv in c.lo]), np.full(c.k, FLOAT_BITS))
                rows.add([(self.x_cols(li), mem + out), tcol], -np.inf, 0.0)
            for ci in readers:
                term = self._reader_term(li, ci, profile.output_ms)
                if np.any(term[1]) or np.any(mem):
                    rows.add([(self.x_cols(li), mem), term, tcol], -np.inf, 0.0)
        cols = np.arange(t0, t0 + len(self.t.layers))
        limit = self.limits[f"latency@{key}"] - profile.network_overhead_ms
        rows.add([(cols, np.ones(cols.size))], -np.inf, limit)

    def solve(self, time_limit: float, gap: float) -> tuple[np.ndarray, str]:
        c = np.zeros(self.n)
        for li, ch in enumerate(self.t.layers):
            c[self.x_cols(li)] = ch.sens
        c /= max(float(np.abs(c).max()), 1e-300)  # scaling changes no argmin
        integrality = np.ones(self.n)
        integrality[self.t_base:] = 0
        upper = np.ones(self.n)
        upper[self.t_base:] = np.inf
        res = milp(
            c, integrality=integrality, bounds=Bounds(np.zeros(self.n), upper), constraints=self.build(),
            options={"time_limit": time_limit, "mip_rel_gap": gap, "presolve": False},
        )
        if res.x is None and res.status == 2:
            raise InfeasibleBudget(
                "no policy with one bit-width per layer and one sparsity level per coupled group meets these limits "
                f"({', '.join(f'{m} <= {v:.4g}' for m, v in self.limits.items())}). Raise the budget; if "
                "Budget.bind() accepted it, coupled producers rank their channels differently (the cheapest policy "
                "prunes their union): give them one channel ranking, or use automl.problem.repair.repair."
            )
        if res.x is None:
            raise AutoMLError(f"HiGHS found no policy within {time_limit} s ({res.message}); raise time_limit.")
        return res.x, "optimal" if res.status == 0 else "time_limit"

    def decode(self, x: np.ndarray, space: SearchSpace) -> Policy:
        out = []
        for li, c in enumerate(self.t.layers):
            k = int(np.argmax(x[self.x_cols(li)]))
            s = space.layers[li]
            out.append((s.name, space.decode(s.name, float(c.lo[k]), [int(c.wb[k])] * s.n_groups, int(c.ab[k]))))
        return Policy(tuple(out))


def _objective(sens: Sensitivities) -> Any:
    tables = [ls.table() for ls in sens.layers]

    def objective(li: int, lo: np.ndarray, wb: np.ndarray, ab: np.ndarray) -> np.ndarray:
        ls = sens.layers[li]
        si = np.searchsorted(np.asarray(ls.sparsity_levels), lo)
        wi = np.searchsorted(np.asarray(ls.weight_bits), wb)
        ai = np.searchsorted(np.asarray(ls.act_bits), ab)
        return tables[li][si, wi, ai]

    return objective


def choice_table(space: SearchSpace, cost_model: CostModel, metrics: Sequence[str],
                 sensitivities: Sensitivities | SensitivityFn | None) -> ChoiceTable:
    """Every layer decision priced on ``metrics`` and scored by ``sensitivities``, dominated ones dropped."""
    return build_choices(space, cost_model, metrics, _objective(as_sensitivities(space, sensitivities)))


def solve_ilp_detailed(
    space: SearchSpace,
    cost_model: CostModel,
    bound_budget: BoundBudget,
    sensitivities: Sensitivities | SensitivityFn | None,
    *,
    time_limit: float = 60.0,
    mip_rel_gap: float = 1e-6,
    max_rounds: int = 5,
    table: ChoiceTable | None = None,
) -> IlpResult:
    """Minimise the sum of layer sensitivities under every constraint of ``bound_budget``.

    Args:
        space: the search space (its layers' sparsity levels, non-zero weight bits and
            activation bits are the choices; every channel group of a layer gets the same bits).
        cost_model: prices choices exactly (with its profiles for latency limits).
        bound_budget: the limits, from :meth:`Budget.bind`.
        sensitivities: tables, a callable ``fn(layer, sparsity, weight_bits, act_bits)``, or
            ``None`` for :meth:`Sensitivities.heuristic`.
        time_limit: seconds HiGHS may spend per solve.
        mip_rel_gap: relative optimality gap at which HiGHS stops (1e-6: optimal up to rounding).
        max_rounds: solves allowed when the re-priced result must be tightened.
        table: the priced decisions from :func:`choice_table` for the same space, cost model,
            sensitivities and constrained metrics. A sweep over scaled limits builds it once:
            pricing is most of a solve, and no limit enters it.
    """
    sens = as_sensitivities(space, sensitivities)
    if table is None:
        table = choice_table(space, cost_model, bound_budget.metrics, sens)
    limits = dict(bound_budget.limits)
    notes: list[str] = []
    for round_ in range(1, max_rounds + 1):
        program = _Program(table, cost_model, limits)
        x, status = program.solve(time_limit, mip_rel_gap)
        policy = program.decode(x, space)
        costs = cost_model.price(policy)
        excess = bound_budget.violations(costs)
        if not excess:
            return IlpResult(policy, sens.policy_value(policy, space), status, round_, table.n_x, tuple(notes))
        for metric, over in excess.items():
            limits[metric] = limits[metric] / (1 + over) * (1 - 1e-6)
            notes.append(f"round {round_}: exact {metric} exceeded the program's by {over:.2%}; tightened")
    raise AutoMLError(
        f"the integer program's policy still exceeded the budget after {max_rounds} tightenings ({notes[-1]}). "
        "Use automl.problem.repair.repair on it, or raise max_rounds."
    )


def solve_ilp(
    space: SearchSpace,
    cost_model: CostModel,
    bound_budget: BoundBudget,
    sensitivities: Sensitivities | SensitivityFn | None,
    **options: Any,
) -> Policy:
    """The optimal policy of the separable proxy under the budget (see :func:`solve_ilp_detailed`)."""
    return solve_ilp_detailed(space, cost_model, bound_budget, sensitivities, **options).policy
