"""How well the ONNX Runtime latency profile predicts the latency of exported ONNX files.

ResNet-20 with random weights (timing does not depend on them) and synthetic calibration
data: its ONNX Runtime profile (:func:`automl.export.ort_profile.ort_profile`, cached; pass
``--force`` to re-measure) prices random feasible policies, pruned and quantized, drawn
from the default search space (half of them from ``space.sample``, half uniform policies
at a random weight width in {2..8, 32}, 8-bit activations and a random sparsity level, so
that the set spans light to heavy pruning). Each policy is applied by the
:class:`~automl.quant.engine.QuantEngine`, exported to ``.ampq`` and then to ONNX
(:func:`automl.export.onnx.ampq_to_onnx`) exactly as a search's final step does, and every
exported file is timed end to end in ONNX Runtime at ``--batch`` samples, threads pinned,
round-robin over all files (:func:`automl.export.ort.best_ms`, the protocol the profile uses).
Reports the rank correlation and the median relative error of predicted vs measured. Each run
appends one row (every policy's prediction and measurement) to ``docs/results/latency_fidelity.jsonl``;
``--summarise`` writes the page of the saved runs, whose RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import results
import torch
from scipy.stats import spearmanr
from torch.utils.data import DataLoader, TensorDataset

from automl.analysis.prune import keep_masks
from automl.cost import CostModel, latency_metric
from automl.errors import PolicyError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.task import Task
from automl.export import ort
from automl.export.ampq import export_policy
from automl.export.onnx import ampq_to_onnx
from automl.export.ort_profile import ort_profile
from automl.reference.models import REFERENCE_MODELS
from automl.timing import pin_threads
from search_spaces import Policy, SearchSpace

TITLE = "Latency fidelity: the ONNX Runtime profile against exported ONNX files"


def synthetic_task(arch: str, seed: int) -> Task:
    """The reference architecture with random weights and random 28x28 inputs."""
    torch.manual_seed(seed)
    model = REFERENCE_MODELS[arch]().eval()
    x = torch.randn(256, 1, 28, 28)
    y = torch.randint(0, 10, (256,))
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    return Task(model, x[:2], loader, loader, loader, loader)


def feasible(problem: Problem, policy: Policy) -> Policy | None:
    policy = problem.space.resolve(policy)
    try:
        keep_masks(problem.analysis, policy)
    except PolicyError:
        return None
    return policy


def random_policies(space: SearchSpace, problem: Problem, n: int, rng: np.random.Generator) -> list[Policy]:
    out: list[Policy] = []
    levels = sorted({lv for s in space.layers for lv in s.sparsity_levels})
    while len(out) < n:
        if len(out) % 2:
            policy = space.sample(rng)
        else:
            policy = space.uniform(int(rng.choice([2, 3, 4, 5, 6, 8, 32])), 8, sparsity=float(rng.choice(levels)))
        p = feasible(problem, policy)
        if p is not None:
            out.append(p)
    return out


def figures(r: dict[str, Any]) -> tuple[float, float]:
    """Spearman of predicted and measured latency, and the median relative error."""
    p, m = np.array(r["predicted_ms"]), np.array(r["measured_ms"])
    return float(spearmanr(p, m).statistic), float(np.median(np.abs(p - m) / m))


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """One line per run; the RESULT line is the latest run's."""
    table = results.runs_table(rows, [
        ("network", lambda r: r["arch"]), ("files", lambda r: len(r["measured_ms"])), ("batch", lambda r: r["batch"]),
        ("profile", lambda r: f"{r['profile']} (stated error {r['stated_error']:.1%})"),
        ("Spearman", lambda r: f"{figures(r)[0]:.3f}"), ("median abs rel error", lambda r: f"{figures(r)[1]:.3f}")])
    rho, err = figures(rows[-1])
    return results.Summary((table,), f"RESULT spearman={rho:.3f} median_abs_rel_error={err:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet20", choices=sorted(REFERENCE_MODELS))
    parser.add_argument("--policies", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15, help="round-robin timing rounds over the exported files")
    parser.add_argument("--force", action="store_true", help="measure the profile again instead of the cached one")
    parser.add_argument("--seed", type=int, default=0)
    results.add_arguments(parser, "latency_fidelity")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    pin_threads(args.threads)
    task = synthetic_task(args.arch, args.seed)
    problem = Problem.from_task(task)
    ev = Evaluator(problem, EvalConfig(fidelity=1))
    profile, path = ort_profile(task.model, task.sample_input, problem.analysis, batch=args.batch,
                                threads=args.threads, force=args.force)
    cm = CostModel(problem.analysis, problem.space, [profile])
    key = latency_metric(profile.name)
    policies = random_policies(problem.space, problem, args.policies, np.random.default_rng(args.seed))
    x = torch.randn(args.batch, 1, 28, 28)
    sessions = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy in policies:
            qmodel = ev.engine.apply(policy)
            ampq = Path(tmp) / "m.ampq"
            export_policy(qmodel, problem.analysis, policy, ampq, sample_input=x, float_model=ev.float_model, repeats=1)
            sessions.append(ort.session(ampq_to_onnx(ampq).SerializeToString(), args.threads))
    measured = ort.best_ms([ort.runner(s, x.numpy()) for s in sessions], args.repeats)
    predicted = [cm.price(p).value(key) for p in policies]
    for policy, pred, ms in zip(policies, predicted, measured, strict=True):
        print(f"sparsity {policy.channel_sparsity():5.1%}  mean bits {policy.mean_weight_bits():5.2f}  "
              f"predicted {pred:7.3f} ms  measured {ms:7.3f} ms")
    print(f"{args.arch}: {len(predicted)} exported ONNX files (pruned + quantized), batch {args.batch}, {args.threads} "
          f"thread(s), profile {profile.name} ({path}, stated error {profile.stated_error:.1%})")
    row = {"arch": args.arch, "batch": args.batch, "seed": args.seed, "profile": profile.name,
           "stated_error": profile.stated_error, "sparsity": [p.channel_sparsity() for p in policies],
           "mean_bits": [p.mean_weight_bits() for p in policies], "predicted_ms": [float(x) for x in predicted],
           "measured_ms": [float(x) for x in measured]}
    return results.finish(args, [row], "latency_fidelity", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
