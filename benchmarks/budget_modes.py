"""Which budget handling should the envs use by default? Measured, not guessed.

For each budget mode (``mask``, ``repair``, ``lagrangian``) the same agent (PPO on the Box
action, plus MaskablePPO on the MultiDiscrete form for ``mask``) searches the reference
ResNet-20 (random init; a deterministic synthetic evaluator with layer-dependent sensitivity
scores policies, so the comparison is about the search, not the network) for a fixed number of episodes, i.e. evaluations, the
expensive part of a real search. Reported per mode, over seeds and budgets:

- feasible: the share of evaluated policies that meet the budget (the rest are wasted
  evaluations: a searcher can only return a feasible policy);
- best: the best feasible reward found (accuracy relative to float);
- last: the mean feasible reward of the last 20% of episodes (where learning got to);
- steps/s: env + agent throughput.

Usage: ``python benchmarks/budget_modes.py [--episodes 150] [--seeds 3] [--threads 1]``;
``--summarise docs/results/budget_modes.jsonl`` writes the page of the saved rows (one row per
budget, mode, agent and seed; the summary is over every row of the file).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import results
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from automl.analysis import analyse
from automl.cost import CostModel
from automl.problem.budget import Budget
from automl.problem.metrics import Metrics
from automl.reference.models import resnet20
from envs import DiscreteActions, EnvConfig, JointPruneQuantEnv
from search_spaces import Policy, SearchSpace

TITLE = "Budget modes of the envs: mask, repair, Lagrangian"
BUDGETS = ("size<=0.03x", "bitops<=0.004x", "size<=0.05x,bitops<=0.006x")
RUNS = (("mask", "MaskablePPO"), ("mask", "PPO"), ("repair", "PPO"), ("lagrangian", "PPO"))


class LayeredEvaluator:
    """Accuracy as a deterministic function of the policy whose layers differ in sensitivity.

    Layer ``i`` loses ``(1 + i % 3) * (mean over channels of 0.5**bits, 0.4 if pruned) +
    0.3**act_bits``; unlike :class:`envs.testing.FakeEvaluator` this is not the functional
    form of the repair's heuristic prior, so repair gets no hidden advantage.
    """

    fidelity = 1

    def evaluate(self, policy: Policy, fidelity: int | None = None) -> Metrics:
        damage = 0.0
        for i, (_, lp) in enumerate(policy):
            per = sum(0.4 if b == 0 else (0.0 if b >= 32 else 0.5**b) for b in lp.weight_bits) / len(lp.weight_bits)
            damage += (1.0 + i % 3) * per + 0.3**lp.act_bits
        return Metrics(accuracy=0.95 * float(np.exp(-damage / 4)), loss=damage, kl=damage, fidelity=1)

    def baseline(self) -> Metrics:
        return Metrics(accuracy=0.95, loss=0.0, kl=0.0, fidelity=0)


class Ends(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.ends: list[tuple[bool, float]] = []

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            if done:
                self.ends.append((bool(info["feasible"]), float(info["reward_terms"]["accuracy"])))
        return True


def run(problem: tuple, budget: str, mode: str, algo: str, episodes: int, seed: int) -> dict[str, float]:
    analysis, space, cost_model = problem
    env = JointPruneQuantEnv(
        analysis, space, cost_model, Budget.parse(budget), LayeredEvaluator(), config=EnvConfig(budget_mode=mode)
    )
    steps = episodes * len(env.decisions)
    kwargs = {"n_steps": 8 * len(env.decisions), "batch_size": 74, "n_epochs": 4, "seed": seed, "device": "cpu"}
    if algo == "MaskablePPO":
        model = MaskablePPO("MlpPolicy", DiscreteActions(env, "multidiscrete"), **kwargs)
    else:
        model = PPO("MlpPolicy", env, **kwargs)
    ends = Ends()
    start = time.perf_counter()
    model.learn(steps, callback=ends)
    seconds = time.perf_counter() - start
    ok = np.array([f for f, _ in ends.ends])
    acc = np.array([a for _, a in ends.ends])
    tail = slice(int(0.8 * len(acc)), None)
    feasible_tail = acc[tail][ok[tail]]
    return {
        "feasible": float(ok.mean()),
        "best": float(acc[ok].max()) if ok.any() else float("nan"),
        "last": float(feasible_tail.mean()) if feasible_tail.size else float("nan"),
        "steps_per_s": steps / seconds,
    }


KEYS = ("feasible", "best", "last", "steps_per_s")


def _means(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in KEYS}


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Means over seeds per budget and run, and per run over every budget (the RESULT line)."""
    by_budget: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    by_run: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_budget.setdefault((r["budget"], r["mode"], r["algo"]), []).append(r)
        by_run.setdefault((r["mode"], r["algo"]), []).append(r)
    body = []
    for (budget, mode, algo), rs in by_budget.items():
        m = _means(rs)
        body.append((budget, mode, algo, len(rs), f"{m['feasible']:.2f}", f"{m['best']:.3f}", f"{m['last']:.3f}",
                     f"{m['steps_per_s']:.0f}"))
    table = results.md_table(("budget", "mode", "agent", "seeds", "feasible", "best", "last", "steps/s"), body)
    parts = []
    for (mode, algo), rs in by_run.items():
        m = _means(rs)
        parts.append(f"{mode}_{algo}_feasible={m['feasible']:.2f} {mode}_{algo}_best={m['best']:.3f}")
    return results.Summary((table,), "RESULT " + " ".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    results.add_arguments(parser, "budget_modes")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    analysis = analyse(resnet20().eval(), torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis)
    problem = (analysis, space, CostModel(analysis, space))
    print(f"{'budget':<28}{'mode':<12}{'agent':<13}{'feasible':>9}{'best':>8}{'last':>8}{'steps/s':>9}")
    rows: list[dict[str, Any]] = []
    for budget in BUDGETS:
        for mode, algo in RUNS:
            runs = [{"budget": budget, "mode": mode, "algo": algo, "seed": seed, "episodes": args.episodes,
                     **run(problem, budget, mode, algo, args.episodes, seed)} for seed in range(args.seeds)]
            rows += runs
            mean = _means(runs)
            print(
                f"{budget:<28}{mode:<12}{algo:<13}{mean['feasible']:>9.2f}{mean['best']:>8.3f}"
                f"{mean['last']:>8.3f}{mean['steps_per_s']:>9.0f}",
                flush=True,
            )
    return results.finish(args, rows, "budget_modes", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
