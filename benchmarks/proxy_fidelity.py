"""Does the search score predict what the user gets? Spearman of each fidelity with fine-tuned test accuracy.

Feasible policies are spread over three size budgets (``size<=1/8x``, ``1/16x``, ``1/32x``) and
drawn three ways: uniform combinations (every free layer at one weight / activation bit-width
and sparsity, W2A8-style included), integer-program optima (heuristic sensitivities scaled
per layer by random factors, so the optima differ) and random feasible policies (rejection
sampling; a draw that never fits is repaired, and the row says so). Each policy is scored on
the validation split at fidelity 1 (PTQ), 2 (+ BatchNorm re-estimation) and 3 (+ a few QAT
steps), and then fine-tuned with the fine-tune a search gives its winner
(``Evaluator.final`` with ``SearchConfig().finetune``: labels plus
distillation, cosine schedule, keep-best on validation) and scored on the test split.

    python benchmarks/proxy_fidelity.py --arch resnet20 --policies 42 --threads 1

It prints one row per policy, the Spearman rank correlation of every score (accuracy and
negative KL to the float model, per fidelity) with the fine-tuned test accuracy, the seconds
per evaluation of each fidelity, and ends with
``RESULT spearman_f1=<r> spearman_f2=<r> spearman_f3=<r> default_fidelity=<n>`` where the
default fidelity is the cheapest whose accuracy Spearman is at least 0.8 (0 when none is).

Every scored policy is appended as one row to ``--out`` (default ``docs/results/proxy_fidelity.jsonl``)
as soon as it is done, so shards run side by side share one file and a run cut short keeps its rows;
``--summarise`` prints the summary of saved rows files and writes their page.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import results
import torch
from scipy.stats import spearmanr

from agents.baselines import feasible_uniform
from automl.cost import CostModel
from automl.errors import AutoMLError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.finetune import FinetuneConfig
from automl.problem.budget import BoundBudget, Budget
from automl.problem.ilp import solve_ilp
from automl.problem.repair import repair
from automl.problem.sensitivity import Sensitivities
from automl.reference.checkpoints import reference_task
from automl.runs.config import SearchConfig
from search_spaces.policy import Policy

TITLE = "Proxy fidelity: does the search score predict the fine-tuned result?"
BUDGETS = ("size<=0.125x", "size<=0.0625x", "size<=0.03125x")
TARGET = 0.8


@dataclass
class Row:
    budget: str
    origin: str
    size_kb: float
    mean_bits: float
    sparsity: float
    acc: tuple[float, float, float]
    kl: tuple[float, float, float]
    seconds: tuple[float, float, float]
    test_ft: float
    ft_seconds: float
    val_before_ft: float = float("nan")
    val_after_ft: float = float("nan")


def _ilp_policies(problem: Problem, cost_model: CostModel, bound: BoundBudget, n: int, rng: np.random.Generator) -> list[Policy]:
    base = Sensitivities.heuristic(problem.space)
    out: list[Policy] = []
    for _ in range(2 * n):
        if len(out) >= n:
            break
        scale = {ls.name: float(rng.lognormal(0.0, 1.0)) for ls in base.layers}

        def fn(name: str, s: float, w: int, a: int, scale: dict[str, float] = scale) -> float:
            return scale[name] * base.layer(name).at(s, w, a)

        try:
            policy = solve_ilp(problem.space, cost_model, bound, fn, time_limit=3.0, mip_rel_gap=1e-2)
        except AutoMLError:
            continue
        if policy not in out:
            out.append(policy)
    return out


def _random_policies(problem: Problem, cost_model: CostModel, bound: BoundBudget, n: int,
                     rng: np.random.Generator) -> list[tuple[str, Policy]]:
    out: list[tuple[str, Policy]] = []
    for _ in range(n):
        for _try in range(2000):
            policy = problem.space.sample(rng)
            if bound.feasible(cost_model.price(policy)):
                out.append(("random", policy))
                break
        else:
            fixed, _record = repair(policy, cost_model, bound)
            out.append(("random+repair", fixed))
    return out


def _uniform_policies(problem: Problem, cost_model: CostModel, bound: BoundBudget, n: int,
                      rng: np.random.Generator) -> list[Policy]:
    fitting = feasible_uniform(problem.space, cost_model, bound)
    if len(fitting) <= n:
        return [c.policy for c in fitting]
    picks = rng.choice(len(fitting), size=n, replace=False)
    return [fitting[i].policy for i in sorted(picks)]


def draw_policies(problem: Problem, cost_model: CostModel, per_budget: int, seed: int) -> list[tuple[str, str, Policy]]:
    """``(budget, origin, policy)``: a third uniform, a third ILP, a third random per budget; distinct.

    The list is interleaved (budgets and origins take turns), so a run cut short still
    covers every budget and origin."""
    rng = np.random.default_rng(seed)
    per: list[list[tuple[str, str, Policy]]] = []
    seen: set[str] = set()
    for text in BUDGETS:
        out: list[tuple[str, str, Policy]] = []
        bound = Budget.parse(text).bind(cost_model)
        n_u = per_budget // 3
        n_i = per_budget // 3
        drawn = [("uniform", p) for p in _uniform_policies(problem, cost_model, bound, n_u, rng)]
        drawn += [("ilp", p) for p in _ilp_policies(problem, cost_model, bound, n_i, rng)]
        drawn += _random_policies(problem, cost_model, bound, per_budget - len(drawn), rng)
        for origin, policy in drawn:
            assert bound.feasible(cost_model.price(policy)), "every benchmark policy meets its budget"
            if policy.key() not in seen:
                seen.add(policy.key())
                out.append((text, origin, policy))
        per.append(_interleave_origins(out))
    return [item for group in itertools.zip_longest(*per) for item in group if item is not None]


def _interleave_origins(items: list[tuple[str, str, Policy]]) -> list[tuple[str, str, Policy]]:
    by: dict[str, list[tuple[str, str, Policy]]] = {}
    for item in items:
        by.setdefault(item[1].split("+")[0], []).append(item)
    return [item for group in itertools.zip_longest(*by.values()) for item in group if item is not None]


def score(evaluator: Evaluator, cost_model: CostModel, budget: str, origin: str, policy: Policy,
          recipe: FinetuneConfig) -> Row:
    metrics = [evaluator.evaluate(policy, fidelity=f) for f in (1, 2, 3)]
    start = time.perf_counter()
    final, _model = evaluator.final(policy, recipe.steps, split="test", finetune=recipe)
    costs = cost_model.price(policy)
    report = evaluator.last_finetune
    return Row(
        budget, origin, costs.size_bytes / 1e3, policy.mean_weight_bits(), policy.channel_sparsity(),
        tuple(m.accuracy for m in metrics), tuple(m.kl for m in metrics), tuple(m.seconds for m in metrics),
        final.accuracy, time.perf_counter() - start,
        report.before.accuracy if report else float("nan"), report.after.accuracy if report else float("nan"),
    )


def spearman(x: list[float], y: list[float]) -> float:
    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def default_fidelity(rhos: list[float]) -> int:
    """The cheapest fidelity (1, 2, 3) whose Spearman reaches :data:`TARGET`; 0 when none does."""
    for level, rho in enumerate(rhos, start=1):
        if not math.isnan(rho) and rho >= TARGET:
            return level
    return 0


def format_row(i: int, r: Row) -> str:
    return (f"| {i} | {r.budget} | {r.origin} | {r.size_kb:.1f} | {r.mean_bits:.2f} | {100 * r.sparsity:.0f} | "
            + " | ".join(f"{100 * a:.2f}" for a in r.acc) + " | " + " | ".join(f"{k:.3f}" for k in r.kl)
            + f" | {100 * r.val_before_ft:.2f} | {100 * r.val_after_ft:.2f} | {100 * r.test_ft:.2f} | {r.ft_seconds:.0f} |")


HEADER = ("| # | budget | origin | size KB | mean bits | sparsity % | val acc f1 | val acc f2 | val acc f3 | KL f1 | "
          "KL f2 | KL f3 | val before fine-tune | val after (kept) | test acc fine-tuned | fine-tune s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def summarise(rows: list[Row]) -> tuple[list[float], list[float], list[float]]:
    """Spearman of accuracy per fidelity, of -KL per fidelity, and mean seconds per fidelity."""
    target = [r.test_ft for r in rows]
    acc = [spearman([r.acc[f] for r in rows], target) for f in range(3)]
    kl = [spearman([-r.kl[f] for r in rows], target) for f in range(3)]
    secs = [float(np.mean([r.seconds[f] for r in rows])) for f in range(3)]
    return acc, kl, secs


def as_row(d: dict[str, Any]) -> Row:
    return Row(**{k: tuple(v) if isinstance(v, list) else v for k, v in results.own(d).items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet20", choices=("resnet8", "resnet20"))
    ap.add_argument("--policies", type=int, default=42, help="policies in total, spread over the three budgets")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--finetune-steps", type=int, default=SearchConfig().finetune.steps,
                    help="steps of the search's final fine-tune (the other finetune_* settings are SearchConfig's defaults)")
    ap.add_argument("--qat-steps", type=int, default=40, help="QAT steps of fidelity 3")
    ap.add_argument("--seed", type=int, default=0)
    results.add_arguments(ap, "proxy_fidelity")
    ap.add_argument("--shard", default="0/1", help="I/N: score only the policies whose index is I modulo N "
                    "(run N processes, then --summarise their --out files together)")
    args = ap.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, lambda ds: summary([as_row(d) for d in ds]), __doc__)
    try:
        shard, shards = (int(v) for v in args.shard.split("/"))
        assert 0 <= shard < shards
    except (ValueError, AssertionError):
        ap.error(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    if args.policies < 6:
        ap.error(f"--policies must be at least 6 (two per budget) for a rank correlation, got {args.policies}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    task = reference_task(args.arch, log=None)
    problem = Problem.from_task(task)
    cost_model = CostModel(problem.analysis, problem.space)
    evaluator = Evaluator(problem, EvalConfig(fidelity=2, qat_steps=args.qat_steps), seed=args.seed)
    float_test = evaluator.baseline("test").accuracy
    drawn = draw_policies(problem, cost_model, math.ceil(args.policies / len(BUDGETS)), args.seed)
    recipe = SearchConfig().finetune.replace(steps=args.finetune_steps)
    print(f"{args.arch}: float test {100 * float_test:.2f} %, {len(drawn)} policies, fine-tune {recipe} "
          f"steps, fidelity 3 = {args.qat_steps} QAT steps, {args.threads} thread(s)\n", flush=True)
    print(HEADER, flush=True)
    rows: list[Row] = []
    for i, (budget, origin, policy) in enumerate(drawn):
        if i % shards != shard:
            continue
        rows.append(score(evaluator, cost_model, budget, origin, policy, recipe))
        print(format_row(i, rows[-1]), flush=True)
        results.save(args, [{"arch": args.arch, "index": i, "finetune_steps": args.finetune_steps,
                             "qat_steps": args.qat_steps, **asdict(rows[-1])}], "proxy_fidelity", threads=args.threads)
    print(f"\n{len(rows)} policies, {time.perf_counter() - start:.0f} s in total\n")
    print(results.report(summary(rows)))
    return 0


def summary(rows: list[Row]) -> results.Summary:
    """The policies, the Spearman of every score with the fine-tuned test accuracy, per budget too."""
    acc, kl, secs = summarise(rows)
    ft_secs = float(np.mean([r.ft_seconds for r in rows]))
    policies = HEADER + "\n" + "\n".join(format_row(i, r) for i, r in enumerate(rows))
    lines = ["| score | Spearman with fine-tuned test acc | seconds per evaluation |", "|---|---|---|"]
    lines += [f"| val accuracy, fidelity {f + 1} | {acc[f]:.3f} | {secs[f]:.2f} |" for f in range(3)]
    lines += [f"| -KL to float, fidelity {f + 1} | {kl[f]:.3f} | {secs[f]:.2f} |" for f in range(3)]
    lines.append(f"| (the fine-tune itself, up to its steps + test pass) | - | {ft_secs:.2f} |")
    within = []
    for text in BUDGETS:
        part = [r for r in rows if r.budget == text]
        if len(part) > 2:
            by = summarise(part)[0]
            within.append(f"within {text} ({len(part)} policies): Spearman f1 {by[0]:.3f}, f2 {by[1]:.3f}, f3 {by[2]:.3f}")
    level = default_fidelity(acc)
    return results.Summary((policies, "\n".join(lines), "\n\n".join(within)),
                           f"RESULT spearman_f1={acc[0]:.3f} spearman_f2={acc[1]:.3f} spearman_f3={acc[2]:.3f} "
                           f"default_fidelity={level}")


if __name__ == "__main__":
    sys.exit(main())
