"""Sensitivity methods on ResNet-20: cost, agreement with the measured table, ILP outcome.

For each method of the sensitivity stage (``fisher``, ``hessian``, ``measured`` on a
250-image validation subset, ``measured`` on the whole validation split) it prints the
seconds and evaluations the table cost, the Spearman rank correlation of its per-layer
decision damages (every weight-bit, activation-bit and sparsity entry that differs from
the reference) with the full measured table, and the validation accuracy (fidelity 2) of
the integer program's policy under ``size<=0.0625x`` and ``size<=0.03125x`` with that
table, plus the heuristic prior's ILP outcome as the baseline.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/sensitivity_methods.py [--fidelity 2] [--threads 1]

Ends with ``RESULT spearman_fisher=<r> spearman_hessian=<r> spearman_subset=<r>
seconds_measured=<s> seconds_subset=<s> seconds_fisher=<s> seconds_hessian=<s> ...``.
Measured tables are cached (``~/.cache/automl-mpq/sensitivities.json``), so a re-run
reports the seconds of the first measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from automl.budget import Budget
from automl.cost import CostModel
from automl.evaluate import EvalConfig, Evaluator, Problem
from automl.ilp import solve_ilp
from automl.reference import default_cache_dir, reference_task
from automl.sensitivity import Sensitivities
from automl.sensitivity_stage import sensitivity_stage

BUDGETS = ("size<=0.0625x", "size<=0.03125x")


def entries(sens: Sensitivities) -> np.ndarray:
    """Damage of every one-factor change from the widest choice, in a fixed order."""
    out = []
    for ls in sens.layers:
        t = ls.table()
        w0, a0 = ls.weight_bits.index(max(ls.weight_bits)), ls.act_bits.index(max(ls.act_bits))
        out += [t[i, w0, a0] - t[0, w0, a0] for i in range(1, len(ls.sparsity_levels))]
        out += [t[0, j, a0] - t[0, w0, a0] for j in range(len(ls.weight_bits)) if j != w0]
        out += [t[0, w0, k] - t[0, w0, a0] for k in range(len(ls.act_bits)) if k != a0]
    return np.asarray(out)


def subset_evaluator(problem: Problem, config: EvalConfig, n: int) -> Evaluator:
    """The same evaluator scoring only the first ``n`` validation images."""
    xs, ys = [], []
    for x, y in problem.task.val_loader:
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs)[:n], torch.cat(ys)[:n]
    task = dataclasses.replace(problem.task, val_loader=[(x, y)])
    return Evaluator(Problem(task, problem.analysis, problem.space), config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fidelity", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--subset", type=int, default=250)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = reference_task("resnet20", log=print)
    problem = Problem.from_task(task)
    config = EvalConfig(fidelity=args.fidelity)
    ev = Evaluator(problem, config)
    cost_model = CostModel(problem.analysis, problem.space)
    cache = default_cache_dir()
    t = time.perf_counter()
    ev.evaluate(problem.space.uniform(8))
    eval_seconds = time.perf_counter() - t
    print(f"one evaluation at fidelity {args.fidelity}: {eval_seconds:.1f} s", flush=True)
    reports = {}
    for label, evaluator, method in (("fisher", ev, "fisher"), ("hessian", ev, "hessian"),
                                     ("subset", subset_evaluator(problem, config, args.subset), "measured"),
                                     ("measured", ev, "measured")):
        cache_dir = None if method != "measured" else cache  # the cheap ones are timed afresh every run
        reports[label] = sensitivity_stage(evaluator, problem.space, args.fidelity, method, cache_dir, quiet=False)
        r = reports[label]
        print(f"{label}: {r.seconds:.1f} s, {r.evaluations} evaluations{' (cached)' if r.cached else ''}", flush=True)
    ref = entries(reports["measured"].sensitivities)
    rho = {k: float(spearmanr(entries(r.sensitivities), ref).statistic) for k, r in reports.items() if k != "measured"}
    tables = {**{k: r.sensitivities for k, r in reports.items()}, "heuristic": Sensitivities.heuristic(problem.space)}
    ilp: dict[str, dict[str, float]] = {}
    print("\n| table | spearman vs measured | seconds | evaluations | " + " | ".join(f"ILP val @ {b}" for b in BUDGETS) + " |")
    print("|---|---|---|---|" + "---|" * len(BUDGETS))
    for k, sens in tables.items():
        ilp[k] = {}
        for b in BUDGETS:
            policy = solve_ilp(problem.space, cost_model, Budget.parse([b]).bind(cost_model), sens)
            ilp[k][b] = ev.evaluate(policy).accuracy
        r = reports.get(k)
        print(f"| {k} | {rho.get(k, 1.0 if k == 'measured' else float('nan')):.3f} | "
              f"{r.seconds if r else 0:.1f} | {r.evaluations if r else 0} | "
              + " | ".join(f"{ilp[k][b]:.4f}" for b in BUDGETS) + " |")
    print(
        f"RESULT spearman_fisher={rho['fisher']:.3f} spearman_hessian={rho['hessian']:.3f} spearman_subset={rho['subset']:.3f} "
        f"seconds_measured={reports['measured'].seconds:.1f} seconds_subset={reports['subset'].seconds:.1f} "
        f"seconds_fisher={reports['fisher'].seconds:.1f} seconds_hessian={reports['hessian'].seconds:.1f} "
        f"seconds_per_eval={eval_seconds:.2f} "
        + " ".join(f"ilp_{k}_{b.split('<=')[1]}={ilp[k][b]:.4f}" for k in tables for b in BUDGETS)
    )


if __name__ == "__main__":
    main()
