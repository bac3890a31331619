"""How evaluation, pricing and an env step grow with the network: ResNet-8/20/56 and a MobileNetV2-style net.

For each network (random weights: only shapes and cost matter here, BatchNorm statistics
randomised so folding is not trivial) on 250 MNIST-sized inputs at 1 thread:

- ``eval``: a cold fidelity-1 evaluation of a random policy (apply + quantized forward +
  metrics), median of ``--repeats``; divided by the network's GMACs times the images;
- ``price``: ``CostModel.price`` of a random policy, per quantizable layer in microseconds;
- ``step``: one ``LayerQuantEnv`` step with a constant-time fake evaluator (the env's own
  cost: decoding, budget handling, pricing, observation).

``growth_exponent`` is the least-squares slope of log(evaluation seconds) against
log(MACs) over the four networks: 1 means evaluation cost is proportional to the work of
a forward pass, more means something grows faster than the network.

Each run appends one row to ``docs/results/cost_growth.jsonl``; ``--summarise`` writes the page of
the saved runs, whose RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import results
import torch
from env_speed import ConstantEvaluator  # benchmarks/ is on the path of a script run from it
from torch.utils.data import DataLoader, TensorDataset

from automl.cost import CostModel
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.task import Task
from automl.problem.budget import Budget
from automl.reference.models import MobileNetV2Small, resnet8, resnet20, resnet56
from automl.timing import median_time, pin_threads
from envs import EnvConfig, LayerQuantEnv

TITLE = "Cost growth with the network: ResNet-8/20/56 and a MobileNetV2-style net"


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model.eval()


def task_for(model: torch.nn.Module, images: int) -> Task:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(images, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (images,), generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=images)
    return Task(model, x[:1], loader, loader, loader, loader)


def measure(name: str, model: torch.nn.Module, images: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    problem = Problem.from_task(task_for(randomised(model), images))
    ev = Evaluator(problem, EvalConfig(fidelity=1))
    rng = np.random.default_rng(0)
    policies = [problem.space.sample(rng) for _ in range(32)]
    it = iter(range(10**9))

    def cold_eval() -> None:
        if ev.incremental is not None:
            ev.incremental.cache.clear()
        ev.evaluate(policies[next(it) % len(policies)])

    t_eval = median_time(cold_eval, repeats)
    cost_model = CostModel(problem.analysis, problem.space)
    start = time.perf_counter()
    for p in policies * 10:
        cost_model.price(p)
    t_price = (time.perf_counter() - start) / (len(policies) * 10)
    env = LayerQuantEnv(problem.analysis, problem.space, cost_model, Budget.parse("size<=0.25x"), ConstantEvaluator(),
                        config=EnvConfig())
    env.reset(seed=0)
    actions = rng.uniform(-1, 1, (512, env.action_dim)).astype(np.float32)
    steps, start = 0, time.perf_counter()
    while steps < 512:
        _, _, done, _, _ = env.step(actions[steps])
        steps += 1
        if done:
            env.reset()
    t_step = (time.perf_counter() - start) / steps
    macs = sum(layer.macs for layer in problem.analysis.layers)
    n_layers = len(problem.space.layers)
    return {"name": name, "macs": macs, "params": sum(p.numel() for p in model.parameters()), "layers": n_layers,
            "eval_s": t_eval, "price_per_layer_us": t_price / n_layers * 1e6, "step_us": t_step * 1e6,
            "eval_per_gmac_s": t_eval / (macs * images / 1e9)}


def figures(run: dict[str, Any]) -> str:
    nets = run["networks"]
    slope = float(np.polyfit(np.log([r["macs"] for r in nets]), np.log([r["eval_s"] for r in nets]), 1)[0])
    return (f"eval_per_gmac_s={float(np.median([r['eval_per_gmac_s'] for r in nets])):.3f} "
            f"price_per_layer_us={float(np.median([r['price_per_layer_us'] for r in nets])):.2f} growth_exponent={slope:.3f}")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every run's networks, and the figures of each run; the RESULT line is the latest run's."""
    body = [(*results.when(run), f"{run['images']} images, load {run['load'][0]:.1f} -> {run['load'][1]:.1f}", r["name"],
             r["layers"], r["params"], f"{r['macs'] / 1e6:.2f}", f"{r['eval_s']:.3f}", f"{r['eval_per_gmac_s']:.3f}",
             f"{r['price_per_layer_us']:.1f}", f"{r['step_us']:.0f}")
            for run in rows for r in run["networks"]]
    nets = results.md_table(("date", "commit", "run", "network", "layers", "params", "MMACs", "eval s", "s/GMAC",
                             "price us/layer", "step us"), body)
    runs = results.runs_table(rows, [("figures", figures)])
    return results.Summary((nets, runs), "RESULT " + figures(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=5)
    results.add_arguments(parser, "cost_growth")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    pin_threads(args.threads)
    load = os.getloadavg()[0]
    nets = {"resnet8": resnet8(), "resnet20": resnet20(), "resnet56": resnet56(), "mobilenetv2": MobileNetV2Small()}
    rows = [measure(name, model, args.images, args.repeats) for name, model in nets.items()]
    print(f"{args.images} images, {args.threads} thread(s), load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    run = {"images": args.images, "repeats": args.repeats, "load": [load, os.getloadavg()[0]], "networks": rows}
    return results.finish(args, [run], "cost_growth", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
