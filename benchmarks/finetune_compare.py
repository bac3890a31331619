"""The old final fine-tune against the new one, on the same policies of ResNet-20.

Old: 200 steps of Adam (lr 5e-4, constant) on distillation alone, no validation (what
``Evaluator.final`` did before). New: the default :class:`automl.evaluation.finetune.FinetuneConfig`
(labels + distillation, SGD with momentum, cosine schedule, keep-best on validation).
Policies: the winner of a search (``--run DIR``: its ``best_policies.json``, or its best
trial so far) and, with ``--ilp BUDGET``, the integer program's policy (Hessian sensitivities).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/finetune_compare.py --run /tmp/h-ft-run/runs/<run> [--ilp 'size<=0.03125x']

Ends with ``RESULT winner_old_test=.. winner_new_test=.. mean_old_test=.. mean_new_test=.. ...``.
Each run appends one row to ``docs/results/finetune_compare.jsonl``; ``--summarise`` writes the
page of the saved runs, whose RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import results
import torch

from automl.cost import CostModel
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.finetune import FinetuneConfig
from automl.problem.budget import Budget
from automl.problem.ilp import solve_ilp
from automl.reference.checkpoints import default_cache_dir, reference_task
from automl.runs.sensitivity_stage import sensitivities_for
from search_spaces.policy import Policy

TITLE = "Final fine-tune: the old recipe against the new one"


def run(ev: Evaluator, policy: Policy, recipe: FinetuneConfig) -> dict[str, float]:
    before = ev.evaluate(policy, fidelity=2).accuracy  # BN re-estimated, not fine-tuned
    start = time.perf_counter()
    metrics, model = ev.final(policy, recipe.steps, "test", finetune=recipe)
    seconds = time.perf_counter() - start
    return {"val_before": before, "val_after": ev.score(model, "val").accuracy, "test_after": metrics.accuracy,
            "seconds": seconds}


def figures(run: dict[str, Any]) -> str:
    rows = {(r["policy"], r["recipe"]): r for r in run["rows"]}
    policies = list(dict.fromkeys(r["policy"] for r in run["rows"]))
    first = policies[0]
    mean = {k: float(np.mean([rows[(n, k)]["test_after"] for n in policies])) for k in ("old", "new")}
    return (f"winner_old_val={rows[(first, 'old')]['val_after']:.4f} winner_new_val={rows[(first, 'new')]['val_after']:.4f} "
            f"winner_old_test={rows[(first, 'old')]['test_after']:.4f} winner_new_test={rows[(first, 'new')]['test_after']:.4f} "
            f"winner_val_before={rows[(first, 'new')]['val_before']:.4f} mean_old_test={mean['old']:.4f} "
            f"mean_new_test={mean['new']:.4f} n_policies={len(policies)}")


def summary(runs: list[dict[str, Any]]) -> results.Summary:
    """Every run's policies and recipes; the RESULT line is the latest run's."""
    body = [(*results.when(run), r["policy"], r["recipe"], f"{r['val_before']:.4f}", f"{r['val_after']:.4f}",
             f"{r['test_after']:.4f}", f"{r['seconds']:.0f}") for run in runs for r in run["rows"]]
    table = results.md_table(("date", "commit", "policy", "recipe", "val before", "val after", "test after", "seconds"),
                             body)
    return results.Summary((table,), "RESULT " + figures(runs[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="run directory of a search (its best_policies.json)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ilp", action="append", help="also the integer program's policy at this budget (repeatable)")
    results.add_arguments(ap, "finetune_compare")
    args = ap.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    torch.set_num_threads(args.threads)
    task = reference_task("resnet20", log=print)
    problem = Problem.from_task(task)
    ev = Evaluator(problem, EvalConfig(fidelity=2))
    cost_model = CostModel(problem.analysis, problem.space)
    policies: dict[str, Policy] = {}
    if args.run:
        run_dir = Path(args.run)
        if (run_dir / "best_policies.json").exists():
            entry = next(iter(json.loads((run_dir / "best_policies.json").read_text()).values()))
            policies["winner"] = Policy.from_dict(entry["policy"])
        else:  # the search is still fine-tuning: its best feasible trial so far
            from agents.records import best_record
            from automl.runs.runner import read_journal

            policies["winner"] = best_record(read_journal(run_dir / "trials.jsonl")).policy
    if args.ilp:
        sens, _ = sensitivities_for(ev, problem.space, 2, "hessian", default_cache_dir())
        for b in args.ilp:
            policies[f"ilp {b}"] = solve_ilp(problem.space, cost_model, Budget.parse([b]).bind(cost_model), sens)
    recipes = {"old": FinetuneConfig.legacy(200, 5e-4), "new": FinetuneConfig()}
    rows = []
    print("| policy | recipe | val before | val after | test after | seconds |")
    print("|---|---|---|---|---|---|")
    for name, policy in policies.items():
        for rname, recipe in recipes.items():
            r = run(ev, policy, recipe)
            rows.append({"policy": name, "recipe": rname, **r})
            print(f"| {name} | {rname} | {r['val_before']:.4f} | {r['val_after']:.4f} | {r['test_after']:.4f} | "
                  f"{r['seconds']:.0f} |", flush=True)
    return results.finish(args, [{"run": args.run or "", "rows": rows}], "finetune_compare", summary,
                          threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
