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
Each run appends one row to ``docs/results/eval_speed.jsonl``; ``--summarise`` writes the page of
the saved runs, whose RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
import results
import torch

from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.reference.checkpoints import reference_task
from automl.timing import median_time, pin_threads
from search_spaces.policy import LayerPolicy, Policy

TITLE = "Evaluation speed against a float forward pass"


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


def figures(r: dict[str, Any]) -> str:
    return (f"eval_over_forward={r['eval_over_forward']:.3f} incremental_over_forward={r['incremental_over_forward']:.3f} "
            f"apply_over_forward={r['apply_s'] / r['forward_s']:.4f} eval_dense_over_forward={r['eval_dense_over_forward']:.3f}")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """One line per run (times in ms); the RESULT line is the latest run's."""
    ms = "{:.2f}".format
    table = results.runs_table(rows, [
        ("network, images", lambda r: f"{r['arch']}, {r['images']}"),
        ("load", lambda r: f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}"),
        ("float pass ms", lambda r: ms(1e3 * r["forward_s"])), ("apply ms", lambda r: ms(1e3 * r["apply_s"])),
        ("cold eval ms", lambda r: ms(1e3 * r["eval_s"])), ("pruned", lambda r: f"{r['pruned']:.0%}"),
        ("nothing pruned ms", lambda r: ms(1e3 * r["eval_dense_s"])),
        ("one-layer change ms", lambda r: ms(1e3 * r["incremental_s"])),
        ("layers run", lambda r: f"{r['incremental_share']:.0%}"), ("figures", figures)])
    return results.Summary((table,), "RESULT " + figures(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    results.add_arguments(parser, "eval_speed")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
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
    row = {"arch": args.arch, "images": n, "repeats": args.repeats, "load": [load, os.getloadavg()[0]],
           "forward_s": t_forward, "apply_s": t_apply, "eval_s": t_eval, "eval_dense_s": t_dense, "incremental_s": t_inc,
           "pruned": pruned, "incremental_share": share, "eval_over_forward": eval_ratio,
           "incremental_over_forward": inc_ratio, "eval_dense_over_forward": dense_ratio}
    return results.finish(args, [row], "eval_speed", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
