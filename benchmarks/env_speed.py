"""How fast the compression envs step, and how many episodes a minute a real evaluator allows.

Part 1 steps each env with uniformly random actions on the reference ResNet-20 (random
init: only its shapes matter) and a constant-time fake evaluator, so what is measured is the
env itself: decoding, budget handling (the default mode unless ``--mode``), pricing,
observations and the end-of-episode bookkeeping. The masked Discrete forms, which also price
every candidate of a step for ``action_masks()``, are reported on their own lines. As a
baseline measured in the same run, ``price_us`` is one ``CostModel.price_arrays`` call on a
single state, the floor of an env step that prices its committed cost; ``steps/CPU-s``
counts this process's CPU time only, so it stays comparable on a busy machine.

Part 2 runs random episodes of both envs with the real fidelity-1 evaluator on the trained
reference network (``automl.reference.checkpoints.reference_task("resnet20")``, trained and cached on
first use; ``--random-init`` takes an untrained ResNet-20 with the MNIST loaders instead)
and reports episodes per minute and the env's share of the episode time.

Usage: ``python benchmarks/env_speed.py [--threads 1] [--seconds 5] [--episodes 20]``
Last line: ``RESULT layer_steps_per_s=<x> joint_steps_per_s=<y> episodes_per_min=<z>``.
Each run appends one row to ``docs/results/env_speed.jsonl``; ``--summarise`` writes the page of
the saved runs, whose RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import results
import torch

from automl.analysis import analyse
from automl.cost import CostModel
from automl.errors import InfeasibleBudget
from automl.problem.budget import Budget
from automl.problem.metrics import Metrics
from automl.reference.models import resnet20
from envs import DiscreteActions, EnvConfig, JointPruneQuantEnv, LayerQuantEnv, RewardConfig
from envs.base import CompressionEnv
from search_spaces import Policy, SearchSpace

TITLE = "Env speed: steps per second and episodes per minute"


class ConstantEvaluator:
    """Returns the same metrics for every policy in constant time."""

    fidelity = 1

    def evaluate(self, policy: Policy, fidelity: int | None = None) -> Metrics:
        return Metrics(accuracy=0.9, loss=0.3, kl=0.1, fidelity=1)

    def baseline(self) -> Metrics:
        return Metrics(accuracy=0.95, loss=0.2, kl=0.0, fidelity=0)


def steps_per_second(env: object, seconds: float, seed: int = 0) -> tuple[float, float, float]:
    """Random-action steps per second over ``seconds``, episodes per second, and steps per
    CPU-second of this process (which other load on the machine does not dilute)."""
    rng = np.random.default_rng(seed)
    base: CompressionEnv = env.unwrapped  # type: ignore[attr-defined]
    masked = isinstance(env, DiscreteActions)
    actions = rng.uniform(-1, 1, (4096, base.action_dim)).astype(np.float32)
    env.reset(seed=seed)  # type: ignore[attr-defined]
    steps = episodes = 0
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for _ in range(256):
            if masked:
                action = env.sample_allowed(rng)  # type: ignore[attr-defined]
            else:
                action = actions[steps % len(actions)]
            _, _, terminated, _, _ = env.step(action)  # type: ignore[attr-defined]
            steps += 1
            if terminated:
                episodes += 1
                env.reset()  # type: ignore[attr-defined]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return steps / elapsed, episodes / elapsed, steps / cpu


def price_micros(cost_model: CostModel, space: SearchSpace, repeats: int = 2000) -> float:
    """CPU microseconds of one ``price_arrays`` call on a single state."""
    bits, act = cost_model.policy_arrays(space.uniform(4))
    bits, act = bits[None, :], act[None, :]
    start = time.process_time()
    for _ in range(repeats):
        cost_model.price_arrays(bits, act)
    return (time.process_time() - start) / repeats * 1e6


def real_task(random_init: bool):
    """The trained reference task, or an untrained ResNet-20 on the MNIST loaders."""
    from automl.data import mnist_loaders
    from automl.evaluation.task import Task
    from automl.reference.checkpoints import reference_task

    if not random_init:
        return reference_task("resnet20", log=None), "trained reference resnet20 (automl.reference.checkpoints.reference_task)"
    torch.manual_seed(0)
    loaders = mnist_loaders()
    task = Task(
        model=resnet20().eval(), sample_input=loaders["val"].dataset[0][0].unsqueeze(0),
        train_loader=loaders["train"], calib_loader=loaders["calib"], val_loader=loaders["val"],
        test_loader=loaders["test"], name="mnist-resnet20-random",
    )
    return task, "randomly initialised resnet20 on automl.data.mnist_loaders()"


def episodes_per_minute(make: Callable[[], CompressionEnv], episodes: int) -> tuple[float, float, float]:
    """Random episodes with a real evaluator: episodes per minute, env share of the time, hit rate."""
    env = make()
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    env_seconds = 0.0
    start = time.perf_counter()
    done = 0
    while done < episodes:
        action = rng.uniform(-1, 1, env.action_dim).astype(np.float32)
        t0 = time.perf_counter()
        _, _, terminated, _, info = env.step(action)
        spent = time.perf_counter() - t0
        if terminated:
            spent -= info["metrics"].seconds  # the evaluator's own time, as it reports it
            done += 1
            env.reset()
        env_seconds += spent
    total = time.perf_counter() - start
    return done / total * 60.0, env_seconds / total, env.evaluator.stats.hit_rate  # type: ignore[attr-defined]


def real_evaluator_part(args: argparse.Namespace, budget: Budget) -> list[float]:
    """Episodes per minute of both envs with the real fidelity-1 evaluator."""
    from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem

    task, label = real_task(args.random_init)
    problem = Problem.from_task(task)
    evaluator = Evaluator(problem, EvalConfig(fidelity=1))
    real_cm = CostModel(problem.analysis, problem.space)
    # A searcher scores the float model once; every env shares it (not part of an episode).
    reward = RewardConfig(reference_accuracy=evaluator.baseline().accuracy)
    config = EnvConfig(budget_mode=args.mode, reward=reward)
    print(f"part 2: {label}; fidelity 1; {args.episodes} random episodes per env")
    per_min = []
    for name, cls in (("layer", LayerQuantEnv), ("joint", JointPruneQuantEnv)):
        epm, share, hits = episodes_per_minute(
            lambda cls=cls: cls(problem.analysis, problem.space, real_cm, budget, evaluator, config=config), args.episodes
        )
        per_min.append(epm)
        print(f"{name:<28}{epm:>9.1f} episodes/min  env share of the time {share:.1%}  cache hit rate {hits:.0%}",
              flush=True)
    return per_min


def figures(r: dict[str, Any]) -> str:
    per_min = r["episodes_per_min"] or [float("nan")]
    return (f"layer_steps_per_s={r['steps_per_s']['layer']:.0f} joint_steps_per_s={r['steps_per_s']['joint']:.0f} "
            f"episodes_per_min={float(np.mean(per_min)):.1f}")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every run's steps per second per env form; the RESULT line is the latest run's."""
    cases = list(dict.fromkeys(c for r in rows for c in r["steps_per_s"]))
    table = results.runs_table(rows, [("budget, mode", lambda r: f"{r['budget']}, {r['mode']}"),
                                      ("price call us", lambda r: f"{r['price_us']:.0f}")]
                               + [(f"{c} steps/s", lambda r, c=c: f"{r['steps_per_s'].get(c, float('nan')):.0f}")
                                  for c in cases]
                               + [("episodes/min (layer, joint)",
                                   lambda r: ", ".join(f"{x:.1f}" for x in r["episodes_per_min"]) or "-")])
    return results.Summary((table,), "RESULT " + figures(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per env in part 1")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per env in part 2 (0 skips it)")
    parser.add_argument("--budget", default="size<=0.125x")
    parser.add_argument("--mode", default=EnvConfig().budget_mode, choices=("mask", "repair", "lagrangian"))
    parser.add_argument("--random-init", action="store_true", help="part 2 on an untrained resnet20")
    results.add_arguments(parser, "env_speed")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    torch.set_num_threads(args.threads)
    config = EnvConfig(budget_mode=args.mode)
    budget = Budget.parse(args.budget)

    torch.manual_seed(0)
    analysis = analyse(resnet20().eval(), torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis)
    cost_model = CostModel(analysis, space)
    price_us = price_micros(cost_model, space)
    print(f"resnet20: {len(space.layers)} layers, {cost_model.n_channels} channels; budget {args.budget}; "
          f"mode {args.mode}; torch threads {torch.get_num_threads()}; one price call {price_us:.0f} us")

    def fake(cls: type, **kw: object) -> CompressionEnv:
        return cls(analysis, space, cost_model, budget, ConstantEvaluator(), config=config, **kw)

    cases = {
        "layer": lambda: fake(LayerQuantEnv),
        "joint": lambda: fake(JointPruneQuantEnv),
        "joint_per_layer": lambda: fake(JointPruneQuantEnv, hierarchy="per_layer"),
        "layer_discrete_masked": lambda: DiscreteActions(fake(LayerQuantEnv), "discrete"),
        "joint_multidiscrete_masked": lambda: DiscreteActions(fake(JointPruneQuantEnv), "multidiscrete"),
    }
    rates = {}
    for name, make in cases.items():
        try:
            env = make()
        except InfeasibleBudget as exc:
            rates[name] = float("nan")
            print(f"{name:<28}  not run: {exc}")
            continue
        sps, eps, cpu_sps = steps_per_second(env, args.seconds)
        rates[name] = sps
        print(f"{name:<28}{sps:>9.0f} steps/s {eps:>7.1f} episodes/s {cpu_sps:>9.0f} steps/CPU-s  "
              f"({1e6 / cpu_sps / price_us:.1f} price calls per step)", flush=True)

    per_min: list[float] = []
    if args.episodes > 0:
        per_min = real_evaluator_part(args, budget)
    row = {"budget": args.budget, "mode": args.mode, "seconds": args.seconds, "episodes": args.episodes,
           "random_init": args.random_init, "price_us": price_us, "steps_per_s": rates, "episodes_per_min": per_min}
    return results.finish(args, [row], "env_speed", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
