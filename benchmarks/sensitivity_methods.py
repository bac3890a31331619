"""Sensitivity methods on ResNet-20: cost, agreement with measured damages, ILP outcome.

The cheap methods (``fisher``, ``hessian``) build their whole table; the measured
reference evaluates, at the search fidelity on the whole validation split, a random
sample of ``--sample`` one-factor changes of the uniform 8-bit policy (one layer's weight
or activation bits, or one coupled group's sparsity level): exactly the entries
``measured`` tabulates (``--sample 0`` measures all of them, ~290 evaluations, over an
hour on this shared machine under load). It prints the seconds each method took, the
Spearman rank correlation of the cheap methods' damages with the measured ones on the
sampled entries, and the validation accuracy (fidelity 2) of the integer program's
policy under ``size<=0.0625x`` and ``size<=0.03125x`` with each table (the heuristic
prior as the baseline).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/sensitivity_methods.py [--sample 50] [--threads 1]

Ends with ``RESULT spearman_fisher=<r> spearman_hessian=<r> seconds_measured=<s>
seconds_fisher=<s> seconds_hessian=<s> ...``; ``seconds_measured`` is the whole measured
table's cost estimated from the sample (entries x seconds per evaluation). Each run appends one
row to ``docs/results/sensitivity_methods.jsonl``; ``--summarise`` writes the page of the saved
runs, whose RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import results
import torch
from scipy.stats import spearmanr

from automl.cost import CostModel
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.problem.budget import Budget
from automl.problem.ilp import solve_ilp
from automl.problem.sensitivity import Sensitivities
from automl.reference.checkpoints import reference_task
from automl.runs.sensitivity_stage import sensitivity_stage
from search_spaces.policy import Policy
from search_spaces.space import SearchSpace

TITLE = "Sensitivity methods: cost, agreement with measured damages, ILP outcome"
BUDGETS = ("size<=0.0625x", "size<=0.03125x")


def decisions(space: SearchSpace) -> list[tuple[str, str, float]]:
    """Every one-factor change ``measured`` evaluates: (kind, layer or group lead, choice)."""
    out: list[tuple[str, str, float]] = []
    for members in space.coupled().values():
        lead = space.layer(members[0])
        out += [("sparsity", lead.name, lv) for lv in lead.sparsity_levels if lv != 0.0]
    for s in space.layers:
        out += [("weight", s.name, float(w)) for w in s.nonzero_bits if w != 8]
        out += [("act", s.name, float(a)) for a in s.act_bits if a != 8]
    return out


def changed_policy(space: SearchSpace, kind: str, name: str, choice: float) -> Policy:
    policy = space.uniform(8)
    members = next(m for m in space.coupled().values() if name in m) if kind == "sparsity" else (name,)
    for m in members:
        n = space.layer(m).n_groups
        if kind == "sparsity":
            lp = space.decode(m, choice, [8] * n, 8)
        elif kind == "weight":
            lp = space.decode(m, 0.0, [int(choice)] * n, 8)
        else:
            lp = space.decode(m, 0.0, [8] * n, int(choice))
        policy = policy.replace(m, lp)
    return policy


def table_damage(sens: Sensitivities, space: SearchSpace, kind: str, name: str, choice: float) -> float:
    if kind == "sparsity":
        members = next(m for m in space.coupled().values() if name in m)
        return sum(sens.layer(m).at(choice, 8, 8) - sens.layer(m).at(0.0, 8, 8) for m in members)
    ls = sens.layer(name)
    if kind == "weight":
        return ls.at(0.0, int(choice), 8) - ls.at(0.0, 8, 8)
    return ls.at(0.0, 8, int(choice)) - ls.at(0.0, 8, 8)


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every run's tables (Spearman against the sampled measured damages, cost, the ILP's policy);
    the RESULT line is the latest run's."""
    body = [(*results.when(r), f"{r['sampled_entries']} of {r['entries']}", k, f"{t['spearman']:.3f}",
             ", ".join(f"{kind} {v}" for kind, v in t["by_kind"].items()) or "-", f"{t['seconds']:.1f}", t["evaluations"],
             *(f"{t['ilp'][b]:.4f}" for b in BUDGETS)) for r in rows for k, t in r["tables"].items()]
    table = results.md_table(("date", "commit", "measured entries", "table", "Spearman vs measured", "by kind",
                              "seconds", "evaluations' worth", *(f"ILP val @ {b}" for b in BUDGETS)), body)
    r = rows[-1]
    t = r["tables"]
    line = (f"RESULT spearman_fisher={t['fisher']['spearman']:.3f} spearman_hessian={t['hessian']['spearman']:.3f} "
            f"sampled_entries={r['sampled_entries']} seconds_measured={r['seconds_measured']:.0f} "
            f"seconds_fisher={t['fisher']['seconds']:.1f} seconds_hessian={t['hessian']['seconds']:.1f} "
            f"seconds_per_eval={r['seconds_per_eval']:.2f} "
            + " ".join(f"ilp_{k}_{b.split('<=')[1]}={t[k]['ilp'][b]:.4f}" for k in t for b in BUDGETS))
    return results.Summary((table,), line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fidelity", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sample", type=int, default=50, help="measured one-factor entries (0 = all)")
    results.add_arguments(ap, "sensitivity_methods")
    args = ap.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    torch.set_num_threads(args.threads)
    task = reference_task("resnet20", log=print)
    problem = Problem.from_task(task)
    space = problem.space
    ev = Evaluator(problem, EvalConfig(fidelity=args.fidelity))
    cost_model = CostModel(problem.analysis, space)
    reports = {}
    for method in ("fisher", "hessian"):
        reports[method] = sensitivity_stage(ev, space, args.fidelity, method, None, quiet=False)
        print(f"{method}: {reports[method].seconds:.1f} s, {reports[method].evaluations} evaluations", flush=True)
    every = decisions(space)
    n = len(every) if args.sample == 0 else min(args.sample, len(every))
    sample = [every[i] for i in sorted(np.random.default_rng(0).choice(len(every), n, replace=False))]
    start = time.perf_counter()
    base = ev.evaluate(space.uniform(8)).kl
    measured = []
    for i, d in enumerate(sample):
        measured.append(ev.evaluate(changed_policy(space, *d)).kl - base)
        if (i + 1) % 10 == 0:
            print(f"measured {i + 1}/{n} damages, {time.perf_counter() - start:.0f} s", flush=True)
    per_eval = (time.perf_counter() - start) / (n + 1)
    seconds_measured = per_eval * (len(every) + 1)
    rho, by_kind = {}, {}
    for method, r in reports.items():
        est = [table_damage(r.sensitivities, space, *d) for d in sample]
        rho[method] = float(spearmanr(est, measured).statistic)
        kinds = {}
        for kind in ("weight", "act", "sparsity"):
            idx = [i for i, d in enumerate(sample) if d[0] == kind]
            if len(idx) > 2:
                kinds[kind] = round(float(spearmanr([est[i] for i in idx], [measured[i] for i in idx]).statistic), 3)
        by_kind[method] = kinds
        print(f"{method}: spearman {rho[method]:.3f} over {n} entries; by kind {kinds}", flush=True)
    print(f"\nthe whole measured table: {len(every) + 1} evaluations, ~{seconds_measured:.0f} s at {per_eval:.1f} s each")
    tables = {**{k: r.sensitivities for k, r in reports.items()}, "heuristic": Sensitivities.heuristic(space)}
    ilp: dict[str, dict[str, float]] = {}
    for k, sens in tables.items():
        ilp[k] = {b: ev.evaluate(solve_ilp(space, cost_model, Budget.parse([b]).bind(cost_model), sens)).accuracy
                  for b in BUDGETS}
        print(f"ILP with the {k} table: " + ", ".join(f"{b} {ilp[k][b]:.4f}" for b in BUDGETS), flush=True)
    row = {"fidelity": args.fidelity, "sampled_entries": n, "entries": len(every) + 1, "seconds_per_eval": per_eval,
           "seconds_measured": seconds_measured,
           "tables": {k: {"spearman": rho.get(k, float("nan")), "by_kind": by_kind.get(k, {}),
                          "seconds": reports[k].seconds if k in reports else 0.0,
                          "evaluations": reports[k].evaluations if k in reports else 0, "ilp": ilp[k]}
                      for k in tables}}
    return results.finish(args, [row], "sensitivity_methods", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
