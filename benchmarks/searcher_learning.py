"""What each searcher change does on the reference ResNet-8: learning searchers vs their warm start vs random.

One budget, one seed, few evaluations (time: the machine is shared), validation accuracy at
the search fidelity (no fine-tune; ``benchmarks/search_quality.py`` measures fine-tuned
test accuracy). Sensitivities (KL, one factor at a time from uniform 8 bits, fidelity 1)
are measured once and cached; their evaluations are not in the per-row counts.

Rows:

- ``random``: random search (feasible draws);
- ``warm_start``: the best of the warm-start policies (integer program + uniform baselines
  that fit), what every warm-started searcher begins with;
- ``tpe`` / ``nsga2`` / ``cmaes``: the compact encoding (one channel-group spread for the
  whole network, 52 parameters on ResNet-20), proposed-policy constraints;
- ``tpe_layer_spread``: TPE with one spread per layer (71 parameters on ResNet-20, 29 here);
- ``tpe_group_spread``: TPE with one spread per coupled group (63 parameters on ResNet-20, 27 here);
- ``tpe_multi_fidelity``: TPE scoring at fidelity 1 first, the better half promoted;
- ``ppo`` / ``maskable_ppo`` / ``ddpg`` / ``sac``: relative actions, warm start, executed actions;
- ``ppo_cold``: PPO with absolute actions and no warm start (the former behaviour).

    python benchmarks/searcher_learning.py --evaluations 60 --budget 'size<=0.0625x'
    python benchmarks/searcher_learning.py --problem synthetic --evaluations 40   # seconds, known optimum

``--problem synthetic`` is the tests' problem instead (tiny ResNet-8, ``size<=0.12x``, an
evaluator whose accuracy is a known separable function of the policy, heuristic
sensitivities for the warm start); its optimum is the integer program's on the exact
damage, printed as ``optimum``, and the table gains a regret column.

Ends with ``RESULT best_learning_minus_warmstart=<points> rl_minus_tpe=<points>
rl_minus_random=<points> tpe_minus_random=<points>`` (validation accuracy, points). Each invocation
appends one row (its rows of searchers) to ``docs/results/searcher_learning.jsonl``; ``--summarise``
writes the page of the saved invocations, whose RESULT line is the latest one's.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import results
import torch

from agents import Objective, make_searcher
from agents.optuna_search import warm_start_policies
from automl.cost import CostModel
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.problem.budget import Budget
from automl.problem.cache import CachedEvaluator
from automl.problem.sensitivity import measure_sensitivities
from automl.reference.checkpoints import default_cache_dir, reference_task

TITLE = "Searchers that learn: learning searchers against their warm start and random search"

ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "random": ("random", {}),
    "tpe": ("tpe", {"storage": ":memory:"}),
    "tpe_layer_spread": ("tpe", {"storage": ":memory:", "spread": "layer"}),
    "tpe_group_spread": ("tpe", {"storage": ":memory:", "spread": "group"}),
    "tpe_multi_fidelity": ("tpe", {"storage": ":memory:", "stage_fidelity": 1}),
    "nsga2": ("nsga2", {"storage": ":memory:", "population_size": 10}),
    "cmaes": ("cmaes", {"storage": ":memory:"}),
    "ppo": ("ppo", {}),
    "ppo_cold": ("ppo", {"reference": "none", "warm_start": False}),
    "ppo_two_level": ("ppo", {"hierarchy": "two_level"}),
    "maskable_ppo": ("maskable_ppo", {}),
    "ddpg": ("ddpg", {}),
    "ddpg_cold": ("ddpg", {"reference": "none", "warm_start": False}),
    "sac": ("sac", {}),
}
RL = ("ppo", "ppo_two_level", "maskable_ppo", "ddpg", "sac")


def synthetic_problem() -> tuple[Any, float]:
    """The tests' objective factory and the known optimum's accuracy."""
    from agents.ilp import ILPSearcher
    from automl.problem.sensitivity import as_sensitivities

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers live beside automl/
    from tests.agents_support import make_objective

    exact = make_objective(budget="size<=0.12x")
    optimum = exact(ILPSearcher(exact).solve()).accuracy

    def objective() -> Objective:
        o = make_objective(budget="size<=0.12x")
        o.sensitivities = as_sensitivities(o.space, None)
        return o

    return objective, optimum


def resnet8_objective(args: argparse.Namespace) -> Any:
    """A factory of objectives on the reference ResNet-8 (measured, cached sensitivities)."""
    task = reference_task("resnet8", log=print)
    problem = Problem.from_task(task)
    evaluator = Evaluator(problem, EvalConfig(fidelity=args.fidelity))
    cost_model = CostModel(problem.analysis, problem.space)
    start = time.perf_counter()
    sens = measure_sensitivities(
        lambda p: evaluator.evaluate(p, fidelity=1), problem.space, problem.space.uniform(8), metric="kl",
        cache_path=default_cache_dir() / "sensitivities.json", cache_tag=f"{task.name}:val:fid1",
    )
    print(f"sensitivities ({sens.source}) in {time.perf_counter() - start:.0f} s", flush=True)
    bound = Budget.parse(args.budget).bind(cost_model)
    print(f"float val {100 * evaluator.baseline('val').accuracy:.2f} %  budget {args.budget}  evaluations "
          f"{args.evaluations}  seed {args.seed}  fidelity {args.fidelity}")
    return lambda: Objective(CachedEvaluator(evaluator), cost_model, bound, sensitivities=sens)


def figures(inv: dict[str, Any]) -> str:
    best = {r["row"]: r["best"] for r in inv["rows"]}
    nan = float("nan")
    learning = [v for k, v in best.items() if k not in ("random", "warm_start")]
    rl = max((best[k] for k in RL if k in best), default=nan)
    return (f"best_learning_minus_warmstart={max(learning, default=nan) - best.get('warm_start', nan):.2f} "
            f"rl_minus_tpe={rl - best.get('tpe', nan):.2f} rl_minus_random={rl - best.get('random', nan):.2f} "
            f"tpe_minus_random={best.get('tpe', nan) - best.get('random', nan):.2f}")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every invocation's rows (best validation %, distinct policies, regret where the optimum is known);
    the RESULT line is the latest invocation's."""
    body = []
    for inv in rows:
        setting = (f"{inv['problem']}, {inv['budget']}, {inv['evaluations']} evaluations, seed {inv['seed']}, "
                   f"fidelity {inv['fidelity']}")
        optimum = inv.get("optimum", float("nan"))
        for r in inv["rows"]:
            regret = f"{100 * optimum - r['best']:.2f}" if optimum == optimum else "-"
            body.append((*results.when(inv), setting, r["row"], f"{r['best']:.2f}", r["distinct"], r["counts"],
                         f"{r['seconds']:.0f}", regret))
    table = results.md_table(("date", "commit", "setting", "row", "best val %", "distinct", "evaluations f1/f",
                              "seconds", "regret"), body)
    return results.Summary((table,), "RESULT " + figures(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluations", type=int, default=60)
    ap.add_argument("--budget", default="size<=0.0625x")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fidelity", type=int, default=2)
    ap.add_argument("--rows", default=",".join(["warm_start", *ROWS]))
    ap.add_argument("--problem", choices=("resnet8", "synthetic"), default="resnet8")
    results.add_arguments(ap, "searcher_learning")
    args = ap.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    ap_problem = args.problem
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    optimum = float("nan")
    if ap_problem == "synthetic":
        make_objective, optimum = synthetic_problem()
        args.fidelity = 1
        print(f"synthetic problem: optimum {100 * optimum:.2f} %  evaluations {args.evaluations}  seed {args.seed}")
    else:
        make_objective = resnet8_objective(args)
    print(f"{'row':<20} {'best val %':>10} {'distinct':>8} {'evals f1/f' + str(args.fidelity):>12} {'seconds':>8}"
          + (f" {'regret':>7}" if optimum == optimum else ""))
    out: list[dict[str, Any]] = []
    for row in args.rows.split(","):
        if ap_problem == "synthetic" and row == "tpe_multi_fidelity":
            continue  # the synthetic evaluator has one fidelity
        objective = make_objective()
        t0 = time.perf_counter()
        if row == "warm_start":
            records = [objective(p, number=i) for i, p in enumerate(warm_start_policies(objective))]
        else:
            name, options = ROWS[row]
            records = list(make_searcher(name, objective, seed=args.seed, **options).run(args.evaluations).records)
        full = [r for r in records if r.feasible and r.metrics.fidelity == args.fidelity]
        best = 100 * max((r.accuracy for r in full), default=float("nan"))
        distinct = len({r.policy.key() for r in records})
        counts = "/".join(str(objective.evaluations_by_fidelity.get(f, 0)) for f in (1, args.fidelity))
        seconds = time.perf_counter() - t0
        out.append({"row": row, "best": best, "distinct": distinct, "counts": counts, "seconds": seconds})
        regret = f" {100 * optimum - best:>7.2f}" if optimum == optimum else ""
        print(f"{row:<20} {best:>10.2f} {distinct:>8} {counts:>12} {seconds:>8.0f}{regret}", flush=True)
    invocation = {"problem": ap_problem, "budget": "size<=0.12x" if ap_problem == "synthetic" else args.budget,
                  "evaluations": args.evaluations, "seed": args.seed, "fidelity": args.fidelity, "optimum": optimum,
                  "rows": out}
    return results.finish(args, [invocation], "searcher_learning", summary, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
