"""What each searcher change does on the reference ResNet-8: learning searchers vs their warm start vs random.

One budget, one seed, few evaluations (time: the machine is shared), validation accuracy at
the search fidelity (no fine-tune; ``benchmarks/search_quality.py`` measures fine-tuned
test accuracy). Sensitivities (KL, one factor at a time from uniform 8 bits, fidelity 1)
are measured once and cached; their evaluations are not in the per-row counts.

Rows:

- ``random``: random search (feasible draws);
- ``warm_start``: the best of the warm-start policies (integer program + uniform baselines
  that fit), what every warm-started searcher begins with;
- ``tpe`` / ``nsga2`` / ``cmaes``: the compact encoding, proposed-policy constraints;
- ``tpe_layer_spread``: TPE with one spread per layer (71 parameters on ResNet-20, 29 here);
- ``tpe_multi_fidelity``: TPE scoring at fidelity 1 first, the better half promoted;
- ``ppo`` / ``maskable_ppo`` / ``ddpg`` / ``sac``: relative actions, warm start, executed actions;
- ``ppo_cold``: PPO with absolute actions and no warm start (the former behaviour).

    python benchmarks/searcher_learning.py --evaluations 60 --budget 'size<=0.0625x'

Ends with ``RESULT best_learning_minus_warmstart=<points> rl_minus_tpe=<points>
rl_minus_random=<points> tpe_minus_random=<points>`` (validation accuracy, points).
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import torch

from agents import Objective, make_searcher
from agents.optuna_search import warm_start_policies
from automl.budget import Budget
from automl.cache import CachedEvaluator
from automl.cost import CostModel
from automl.evaluate import EvalConfig, Evaluator, Problem
from automl.reference import default_cache_dir, reference_task
from automl.sensitivity import measure_sensitivities

ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "random": ("random", {}),
    "tpe": ("tpe", {"storage": ":memory:"}),
    "tpe_layer_spread": ("tpe", {"storage": ":memory:", "spread": "layer"}),
    "tpe_multi_fidelity": ("tpe", {"storage": ":memory:", "stage_fidelity": 1}),
    "nsga2": ("nsga2", {"storage": ":memory:", "population_size": 10}),
    "cmaes": ("cmaes", {"storage": ":memory:"}),
    "ppo": ("ppo", {}),
    "ppo_cold": ("ppo", {"reference": "none", "warm_start": False}),
    "maskable_ppo": ("maskable_ppo", {}),
    "ddpg": ("ddpg", {}),
    "sac": ("sac", {}),
}
RL = ("ppo", "maskable_ppo", "ddpg", "sac")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluations", type=int, default=60)
    ap.add_argument("--budget", default="size<=0.0625x")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fidelity", type=int, default=2)
    ap.add_argument("--rows", default=",".join(["warm_start", *ROWS]))
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
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
    float_val = evaluator.baseline("val").accuracy
    print(f"float val {100 * float_val:.2f} %  budget {args.budget}  evaluations {args.evaluations}  "
          f"seed {args.seed}  fidelity {args.fidelity}")
    print(f"{'row':<20} {'best val %':>10} {'distinct':>8} {'evals f1/f2':>12} {'seconds':>8}")
    best: dict[str, float] = {}
    for row in args.rows.split(","):
        objective = Objective(CachedEvaluator(evaluator), cost_model, bound, sensitivities=sens)
        t0 = time.perf_counter()
        if row == "warm_start":
            records = [objective(p, number=i) for i, p in enumerate(warm_start_policies(objective))]
        else:
            name, options = ROWS[row]
            records = list(make_searcher(name, objective, seed=args.seed, **options).run(args.evaluations).records)
        full = [r for r in records if r.feasible and r.metrics.fidelity == args.fidelity]
        best[row] = 100 * max((r.accuracy for r in full), default=float("nan"))
        distinct = len({r.policy.key() for r in records})
        counts = "/".join(str(objective.evaluations_by_fidelity.get(f, 0)) for f in (1, args.fidelity))
        print(f"{row:<20} {best[row]:>10.2f} {distinct:>8} {counts:>12} {time.perf_counter() - t0:>8.0f}", flush=True)
    learning = [v for k, v in best.items() if k not in ("random", "warm_start")]
    rl = max((best[k] for k in RL if k in best), default=float("nan"))
    print(
        f"RESULT best_learning_minus_warmstart={max(learning, default=float('nan')) - best.get('warm_start', float('nan')):.2f} "
        f"rl_minus_tpe={rl - best.get('tpe', float('nan')):.2f} rl_minus_random={rl - best.get('random', float('nan')):.2f} "
        f"tpe_minus_random={best.get('tpe', float('nan')) - best.get('random', float('nan')):.2f}"
    )


if __name__ == "__main__":
    main()
