"""How much a policy evaluation costs next to a plain float forward pass.

Times, on the validation split of the reference ResNet-20 with threads pinned:
a float forward pass of the whole split, applying a random policy (weight gather and
activation lookup), and a full fidelity-1 evaluation (apply + quantized forward + metrics).
Ratios are measured in the same run, so machine load cancels out.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from automl.evaluate import EvalConfig, Evaluator, Problem
from automl.reference import reference_task
from automl.timing import median_time, pin_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    pin_threads(args.threads)
    task = reference_task(args.arch)
    problem = Problem.from_task(task)
    ev = Evaluator(problem, EvalConfig(fidelity=1))
    xs, _, _ = ev._split("val")
    rng = np.random.default_rng(0)
    policies = [problem.space.sample(rng) for _ in range(64)]

    def forward() -> None:
        with torch.no_grad():
            for x in xs:
                task.model(x)

    it = iter(range(10**9))
    t_forward = median_time(forward, args.repeats)
    t_apply = median_time(lambda: ev.engine.apply(policies[next(it) % len(policies)]), 50, warmup=3)
    t_eval = median_time(lambda: ev.evaluate(policies[next(it) % len(policies)]), args.repeats)
    n = sum(len(x) for x in xs)
    print(f"{args.arch}, {n} validation images, {args.threads} thread(s)")
    print(f"float forward pass       {t_forward * 1e3:8.2f} ms")
    print(f"apply a random policy    {t_apply * 1e3:8.2f} ms")
    print(f"fidelity-1 evaluation    {t_eval * 1e3:8.2f} ms")
    print(f"RESULT eval_over_forward={t_eval / t_forward:.3f} apply_over_forward={t_apply / t_forward:.4f}")


if __name__ == "__main__":
    main()
