"""The final fine-tune's optimiser and learning rate, old default (SGD 0.01) against new (Adam 5e-4).

ResNet-20, 300 steps, keep-best, on a search's winner (``trial6 RUN/best_policies.json``) or on
uniform W2A4 with 25 % sparsity (``w2a4``). Each run appends one row to
``docs/results/finetune_recipe.jsonl``; ``--summarise`` writes the page of the saved runs, whose
RESULT line is the latest run's.

    python benchmarks/finetune_recipe.py trial6 RUN/best_policies.json
    python benchmarks/finetune_recipe.py w2a4
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import results

TITLE = "Final fine-tune recipe: SGD against Adam"
RECIPES = ("sgd_lr0.01_300", "adam_lr5e-4_300")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every run's two recipes; the RESULT line is the latest run's."""
    body = [(*results.when(r), r["policy"], name, f"{x['val_before']:.4f}", f"{x['val_after']:.4f}", x["best_step"],
             f"{x['test']:.4f}", f"{x['seconds']:.0f}") for r in rows for name, x in r["recipes"].items()]
    table = results.md_table(("date", "commit", "policy", "recipe", "val before", "val after", "best step", "test",
                              "seconds"), body)
    last = rows[-1]["recipes"]
    return results.Summary((table,), f"RESULT sgd_test={last[RECIPES[0]]['test']:.4f} adam_test={last[RECIPES[1]]['test']:.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="?", choices=("trial6", "w2a4"), help="the policy: a search's winner or uniform W2A4")
    ap.add_argument("best_policies", nargs="?", help="trial6: the run's best_policies.json")
    results.add_arguments(ap, "finetune_recipe")
    args = ap.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    if args.which is None or (args.which == "trial6" and not args.best_policies):
        ap.error("give w2a4, or trial6 and a run's best_policies.json")
    from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
    from automl.evaluation.finetune import FinetuneConfig
    from automl.reference.checkpoints import reference_task
    from automl.timing import pin_threads
    from search_spaces.policy import Policy

    pin_threads(1)
    task = reference_task("resnet20", threads=1)
    problem = Problem.from_task(task)
    ev = Evaluator(problem, EvalConfig(fidelity=2))
    if args.which == "trial6":
        with open(args.best_policies) as fh:
            best = json.load(fh)
        policy = Policy.from_dict(next(iter(best.values()))["policy"])
    else:
        policy = problem.space.uniform(2, 4, sparsity=0.25)
    recipes = {}
    configs = (FinetuneConfig(steps=300, optimizer="sgd", lr=0.01), FinetuneConfig(steps=300, optimizer="adam", lr=5e-4))
    for name, cfg in zip(RECIPES, configs, strict=True):
        t = time.perf_counter()
        m, _ = ev.final(policy, 300, "test", finetune=cfg)
        r = ev.last_finetune
        recipes[name] = {"val_before": r.before.accuracy, "val_after": r.after.accuracy, "best_step": r.best_step,
                         "test": m.accuracy, "seconds": time.perf_counter() - t}
        print(f"{args.which} {name}: val {r.before.accuracy:.4f} -> {r.after.accuracy:.4f} (best step {r.best_step}), "
              f"test {m.accuracy:.4f}, {recipes[name]['seconds']:.0f} s", flush=True)
    return results.finish(args, [{"policy": args.which, "recipes": recipes}], "finetune_recipe", summary, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
