"""How much a policy evaluation costs next to a BatchNorm-folded float forward pass.

Times, on the validation split of the reference ResNet-20 with threads pinned:

- a float forward pass of the whole split through the BatchNorm-folded network (the
  like-for-like baseline: the quantized network is folded too);
- applying a random policy (weight gather and activation lookup);
- a full fidelity-1 evaluation of a random policy with a cold activation cache (apply,
  quantized forward through the staged executor, storing the activations, metrics); random
  policies prune channels (the share is printed), which the engine skips, so the
  same evaluation of the policies with every pruned channel given back its lowest bit-width
  (``eval_dense_over_forward``) shows the quantization overhead alone;
- an incremental fidelity-1 evaluation: a policy that differs from an evaluated one in one
  layer of the last third of the network (execution order), so only the suffix runs.

Ratios are measured in the same run, so machine load cancels out (mostly: report it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.reference.checkpoints import reference_task
from automl.timing import median_time, pin_threads
from search_spaces.policy import LayerPolicy, Policy


def one_layer_changes(problem: Problem, ev: Evaluator, base: Policy, n: int, rng: np.random.Generator) -> list[Policy]:
    """Copies of ``base`` that differ from it in one layer of the last third (execution order)."""
    order = ev.incremental.staged.layer_order
    tail = order[int(np.ceil(2 * len(order) / 3)):]
    names = problem.space.names
    out: list[Policy] = []
    while len(out) < n:
        name = tail[int(rng.integers(len(tail)))]
        other = problem.space.sample(rng).as_dict()[name]
        if other == base.as_dict()[name]:
            continue
        layers = list(base)
        layers[names.index(name)] = (name, other)
        out.append(Policy(tuple(layers)))
    return out


def unpruned(problem: Problem, policy: Policy) -> Policy:
    """``policy`` with every pruned channel at its layer's lowest non-zero weight bit-width."""
    layers = []
    for ls, (name, lp) in zip(problem.space.layers, policy, strict=True):
        low = min(b for b in ls.weight_bits if b > 0)
        layers.append((name, LayerPolicy(lp.act_bits, tuple(b or low for b in lp.weight_bits), lp.nm)))
    return Policy(tuple(layers))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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
    assert ev.incremental is not None, ev.incremental_error
    xs, _, _ = ev._split("val")
    rng = np.random.default_rng(0)
    policies = [problem.space.sample(rng) for _ in range(64)]
    dense = [unpruned(problem, p) for p in policies]
    pruned = statistics.mean(lp.sparsity for p in policies for _, lp in p)
    base = policies[0]
    changes = one_layer_changes(problem, ev, base, 64, rng)
    folded = ev.engine.folded

    def forward() -> None:
        with torch.no_grad():
            for x in xs:
                folded(x)

    def cold_eval() -> None:
        ev.incremental.cache.clear()
        ev.evaluate(policies[next(it) % len(policies)])

    def cold_dense_eval() -> None:
        ev.incremental.cache.clear()
        ev.evaluate(dense[next(it) % len(dense)])

    def incremental_eval() -> None:
        ev.evaluate(changes[next(it) % len(changes)])

    it = iter(range(10**9))
    load = os.getloadavg()[0]
    forward()
    cold_eval()
    # Alternate baseline and evaluation so that load drifting during the run cancels in each pair.
    pairs = []
    for _ in range(args.repeats):
        pairs.append((timed(forward), timed(cold_eval)))
    t_forward = statistics.median(f for f, _ in pairs)
    eval_ratio = statistics.median(e / f for f, e in pairs)
    t_eval = statistics.median(e for _, e in pairs)
    dense_pairs = [(timed(forward), timed(cold_dense_eval)) for _ in range(args.repeats)]
    dense_ratio = statistics.median(e / f for f, e in dense_pairs)
    t_dense = statistics.median(e for _, e in dense_pairs)
    t_apply = median_time(lambda: ev.engine.apply(policies[next(it) % len(policies)]), 50, warmup=3)
    ev.incremental.cache.clear()
    ev.evaluate(base)
    incremental_eval()  # the first change stores the base's prefix (a prefix is stored on its second sight)
    run0, total0 = ev.incremental.layers_run, ev.incremental.layers_total
    inc_pairs = [(timed(forward), timed(incremental_eval)) for _ in range(args.repeats)]
    share = (ev.incremental.layers_run - run0) / max(1, ev.incremental.layers_total - total0)
    t_inc = statistics.median(i for _, i in inc_pairs)
    inc_ratio = statistics.median(i / f for f, i in inc_pairs)
    n = sum(len(x) for x in xs)
    print(f"{args.arch}, {n} validation images, {args.threads} thread(s), load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"folded float forward pass     {t_forward * 1e3:8.2f} ms")
    print(f"apply a random policy         {t_apply * 1e3:8.2f} ms")
    print(f"fidelity-1 evaluation (cold)  {t_eval * 1e3:8.2f} ms  (random policies, {pruned:.0%} of channels pruned)")
    print(f"  the same, nothing pruned    {t_dense * 1e3:8.2f} ms")
    print(f"one-layer change, last third  {t_inc * 1e3:8.2f} ms  ({share:.0%} of the quantized layers ran)")
    print(f"activation cache: {ev.incremental.stats.to_dict()}")
    print(f"RESULT eval_over_forward={eval_ratio:.3f} incremental_over_forward={inc_ratio:.3f} "
          f"apply_over_forward={t_apply / t_forward:.4f} eval_dense_over_forward={dense_ratio:.3f}")


if __name__ == "__main__":
    main()
