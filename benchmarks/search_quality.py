"""Search quality on the reference ResNet-20: every searcher, the same evaluations, several budgets.

For each budget the best uniform-precision policy that fits (every weight bit-width x every
sparsity level, evaluated) is the baseline; then each searcher runs ``--evaluations``
evaluations on the validation split at fidelity 1 (post-training quantization). The best
policy of each row is fine-tuned briefly (fidelity 3: QAT distilled from the float model)
and scored on the test split. Sensitivities for the integer program and the repair are
measured once (KL damage, one factor at a time from uniform 8 bits) and cached.

    python benchmarks/search_quality.py                      # 150 evaluations, 3 budgets
    python benchmarks/search_quality.py --evaluations 10 --searchers uniform,random,ilp,tpe

The last line is ``RESULT best_minus_uniform=<points> best_learning_minus_ilp=<points>`` for
the tighter size budget (validation accuracy, percentage points): the best searcher against
the best uniform policy, and the best learning searcher (TPE, NSGA-II, RL) against the ILP.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from agents import Objective, make_searcher
from agents.codec import uniform_policies
from agents.records import SearchResult
from automl.budget import Budget
from automl.cache import CachedEvaluator
from automl.cost import CostModel
from automl.evaluate import EvalConfig, Evaluator, Problem
from automl.reference import default_cache_dir, reference_task
from automl.sensitivity import Sensitivities, measure_sensitivities

DEFAULT_BUDGETS = ("size<=0.0625x", "size<=0.125x", "bitops<=0.0125x")
DEFAULT_SEARCHERS = ("uniform", "random", "ilp", "tpe", "nsga2", "ppo", "maskable_ppo", "ddpg")
LEARNING = ("tpe", "nsga2", "gp", "cmaes", "ppo", "maskable_ppo", "ddpg", "td3", "sac")
OPTIONS: dict[str, dict[str, Any]] = {
    "ilp": {"time_limit": 10.0, "mip_rel_gap": 1e-3},
    "tpe": {"storage": ":memory:"},
    "nsga2": {"storage": ":memory:"},
    "gp": {"storage": ":memory:"},
    "cmaes": {"storage": ":memory:"},
}


@dataclass
class Row:
    budget: str
    searcher: str
    val_accuracy: float
    test_accuracy: float
    size_kb: float
    bitops_m: float
    evaluations: int
    seconds: float


@dataclass
class Bench:
    problem: Problem
    evaluator: Evaluator
    cost_model: CostModel
    sensitivities: Sensitivities
    float_val: float
    float_test: float


def build(threads: int, log: bool = True) -> Bench:
    torch.set_num_threads(threads)
    task = reference_task("resnet20", log=print if log else None)
    problem = Problem.from_task(task)
    evaluator = Evaluator(problem, EvalConfig(fidelity=1, qat_steps=40))
    cost_model = CostModel(problem.analysis, problem.space)
    start = time.perf_counter()
    sens = measure_sensitivities(
        evaluator.evaluate, problem.space, problem.space.uniform(8), metric="kl",
        cache_path=default_cache_dir() / "sensitivities.json", cache_tag=f"{task.name}:val:fid1",
    )
    if log:
        print(f"sensitivities ({sens.source}) ready in {time.perf_counter() - start:.0f} s", flush=True)
    return Bench(problem, evaluator, cost_model, sens, evaluator.baseline("val").accuracy,
                 evaluator.baseline("test").accuracy)


def test_accuracy(bench: Bench, policy: Any) -> float:
    """Test accuracy of ``policy`` after a short distilled fine-tune (fidelity 3)."""
    return bench.evaluator.evaluate(policy, fidelity=3, split="test").accuracy


def uniform_row(bench: Bench, budget: str) -> tuple[Row, Any]:
    start = time.perf_counter()
    objective = Objective(CachedEvaluator(bench.evaluator), bench.cost_model,
                          Budget.parse(budget).bind(bench.cost_model), sensitivities=bench.sensitivities)
    fitting = [p for _, _, p in uniform_policies(bench.problem.space) if objective.feasible(p)]
    records = [objective(p, number=i, searcher="uniform") for i, p in enumerate(fitting)]
    result = SearchResult("uniform", tuple(records), objective.limits, objective.budget_text,
                          time.perf_counter() - start)
    return _row(bench, budget, result, time.perf_counter() - start), result


def searcher_row(bench: Bench, budget: str, name: str, n: int, seed: int) -> tuple[Row, SearchResult]:
    start = time.perf_counter()
    objective = Objective(CachedEvaluator(bench.evaluator), bench.cost_model,
                          Budget.parse(budget).bind(bench.cost_model), sensitivities=bench.sensitivities)
    result = make_searcher(name, objective, seed=seed, **OPTIONS.get(name, {})).run(n)
    return _row(bench, budget, result, time.perf_counter() - start), result


def _row(bench: Bench, budget: str, result: SearchResult, seconds: float) -> Row:
    best = result.best
    if best is None:
        nan = float("nan")
        return Row(budget, result.searcher, nan, nan, nan, nan, result.n_evaluations, seconds)
    return Row(budget, result.searcher, best.accuracy, test_accuracy(bench, best.policy), best.costs.size_bytes / 1e3,
               best.costs.bitops / 1e6, result.n_evaluations, seconds)


def run_budget(budget: str, searchers: list[str], n: int, seed: int, threads: int, out_dir: str | None) -> list[Row]:
    """All rows of one budget (one process: the evaluator is built here)."""
    bench = build(threads, log=False)
    rows = []
    for name in searchers:
        if name == "uniform":
            row, result = uniform_row(bench, budget)
        else:
            row, result = searcher_row(bench, budget, name, n, seed)
        rows.append(row)
        print(f"[{budget}] {format_row(row)}", flush=True)
        if out_dir:
            path = Path(out_dir) / f"{budget.replace('<=', '_le_').replace('/', '_')}-{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result.to_dict()))
    return rows


def format_row(r: Row) -> str:
    return (f"| {r.budget} | {r.searcher} | {100 * r.val_accuracy:.2f} | {100 * r.test_accuracy:.2f} | "
            f"{r.size_kb:.2f} | {r.bitops_m:.2f} | {r.evaluations} | {r.seconds:.0f} |")


HEADER = ("| budget | searcher | val acc % (fid. 1) | test acc % (fine-tuned) | size kB | MBitOps | evaluations "
          "| wall s |\n|---|---|---|---|---|---|---|---|")


def summary(rows: list[Row], tight: str) -> str:
    """The RESULT line for budget ``tight``."""
    mine = [r for r in rows if r.budget == tight]
    uniform = max((r.val_accuracy for r in mine if r.searcher == "uniform"), default=float("nan"))
    best = max((r.val_accuracy for r in mine if r.searcher != "uniform"), default=float("nan"))
    learning = max((r.val_accuracy for r in mine if r.searcher in LEARNING), default=float("nan"))
    ilp = max((r.val_accuracy for r in mine if r.searcher == "ilp"), default=float("nan"))
    return (f"RESULT best_minus_uniform={100 * (best - uniform):.2f} "
            f"best_learning_minus_ilp={100 * (learning - ilp):.2f}")


def tightest_size(budgets: list[str]) -> str:
    sized = [b for b in budgets if b.strip().startswith("size")]
    if not sized:
        return budgets[0]
    return min(sized, key=lambda b: Budget.parse(b).constraints[0].limit)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--evaluations", type=int, default=150)
    ap.add_argument("--budgets", default=",".join(DEFAULT_BUDGETS), help="semicolon- or comma-separated budgets")
    ap.add_argument("--searchers", default=",".join(DEFAULT_SEARCHERS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--jobs", type=int, default=1, help="budgets run in parallel processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None, help="write every search result as JSON here")
    args = ap.parse_args(argv)
    budgets = [b.strip() for b in args.budgets.replace(";", ",").split(",") if b.strip()]
    searchers = [s.strip() for s in args.searchers.split(",") if s.strip()]
    start = time.perf_counter()
    bench = build(args.threads)  # trains the reference and measures sensitivities once, before forking
    print(f"float model: val {100 * bench.float_val:.2f} %, test {100 * bench.float_test:.2f} %; "
          f"{bench.cost_model.float_costs().size_bytes / 1e3:.1f} kB", flush=True)
    del bench
    jobs = [(b, searchers, args.evaluations, args.seed, args.threads, args.out_dir) for b in budgets]
    if args.jobs > 1:
        with ProcessPoolExecutor(min(args.jobs, len(jobs)), mp_context=get_context("spawn")) as pool:
            rows = [r for part in pool.map(run_budget, *zip(*jobs, strict=True)) for r in part]
    else:
        rows = [r for job in jobs for r in run_budget(*job)]
    print(f"\nResNet-20 on MNIST, {args.evaluations} evaluations per searcher, seed {args.seed}, "
          f"{time.perf_counter() - start:.0f} s in total\n")
    print(HEADER)
    for r in rows:
        print(format_row(r))
    print(summary(rows, tightest_size(budgets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
