"""Does the exported model keep the product promise: smaller, runnable, measured?

On the reference ResNet-20 (cached), two policies, ``space.uniform(4, 8, sparsity=0.25)``
and one random feasible policy, are applied, BatchNorm re-estimated, fine-tuned for a few
QAT steps and exported with :func:`automl.export.export_policy`. For each: the real file
size against the cost model's prediction and the float checkpoint, the exported network's
output agreement and validation accuracy against the in-memory quantized model, and its
latency against the float model on the same batch, threads pinned, in the same run.

The closing RESULT line takes the worst of the two policies on every ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from automl.analysis.prune import keep_masks
from automl.cost.model import CostModel
from automl.errors import PolicyError
from automl.evaluate import EvalConfig, Evaluator, Problem
from automl.export import export_policy, load_exported
from automl.reference import reference_task
from automl.timing import pin_threads
from search_spaces.policy import Policy


def random_feasible(problem: Problem, seed: int) -> Policy:
    """A random policy whose coupled pruning leaves every channel group a channel."""
    rng = np.random.default_rng(seed)
    while True:
        policy = problem.space.sample(rng)
        try:
            keep_masks(problem.analysis, problem.space.resolve(policy))
            return policy
        except PolicyError:
            continue


def accuracy(model: torch.nn.Module, batches: list[torch.Tensor], labels: torch.Tensor) -> float:
    with torch.no_grad():
        logits = torch.cat([model(x) for x in batches])
    return float((logits.argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64, help="samples in the latency / agreement batch")
    parser.add_argument("--finetune-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pin_threads(args.threads)
    problem = Problem.from_task(reference_task("resnet20"))
    ev = Evaluator(problem, EvalConfig(fidelity=2))
    cost = CostModel(problem.analysis, problem.space)
    xs, labels, _ = ev._split("val")
    sample = torch.cat(xs)[: args.batch]
    policies = {
        "uniform w4a8 s0.25": problem.space.uniform(4, 8, sparsity=0.25),
        f"random seed{args.seed}": random_feasible(problem, args.seed),
    }
    print(f"float: {sum(p.numel() for p in ev.float_model.parameters())} parameters, "
          f"cost-model size {cost.float_costs().size_bytes / 1000:.1f} kB")
    print("| policy | file kB | predicted kB | real/pred | header B | float file kB | params | channels | "
          "max abs diff | agreement | val acc in-memory / file | ms exported / float |")
    print("|---" * 12 + "|")
    worst = {"size": 0.0, "latency": 0.0, "diff": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for label, policy in policies.items():
            qmodel = ev.engine.apply(policy)
            ev.engine.reestimate_batchnorm(ev._bn_batch)
            if args.finetune_steps:
                qmodel = ev.finetune(qmodel, args.finetune_steps)
            path = Path(tmp) / "model.ampq"
            r = export_policy(qmodel, problem.analysis, policy, path, sample_input=sample, float_model=ev.float_model,
                              cost_model=cost, threads=args.threads, repeats=args.repeats)
            d = r.to_dict()
            acc_mem, acc_file = accuracy(qmodel, xs, labels), accuracy(load_exported(path), xs, labels)
            print(f"| {label} | {r.file_bytes / 1000:.1f} | {r.predicted_bytes / 1000:.1f} | {d['real_over_predicted']:.3f} "
                  f"| {r.header_bytes} | {r.float_file_bytes / 1000:.1f} | {r.params_float} -> {r.params_exported} "
                  f"| {r.channels_float} -> {r.channels_exported} | {r.max_abs_diff:.2e} | {r.agreement:.3f} "
                  f"| {acc_mem:.4f} / {acc_file:.4f} | {r.latency_exported_ms:.2f} / {r.latency_float_ms:.2f} |")
            worst["size"] = max(worst["size"], d["real_over_predicted"])
            worst["latency"] = max(worst["latency"], d["latency_ratio"])
            worst["diff"] = max(worst["diff"], r.max_abs_diff)
    print(f"RESULT real_over_predicted_size={worst['size']:.4f} exported_over_float_latency={worst['latency']:.4f} "
          f"max_abs_diff={worst['diff']:.3g}")


if __name__ == "__main__":
    main()
