"""What keeping ONNX Runtime from rewriting the exported graph costs, and what the rewrite changed.

The exported ONNX file dequantizes codes with ``Cast`` and ``Mul`` (:func:`automl.export.onnx._float_dequantize`),
so a default ONNX Runtime session runs what was searched. Written with ``DequantizeLinear`` instead
(``ampq_to_onnx(..., int8_kernels=True)``, the file before), the runtime's default optimisations
round biases onto integer grids of their own and fuse layers into int8 kernels. On the reference
ResNet-20 (shipped weights, MNIST test images) for a few policies (uniform 8/8, 4/8 with and
without pruning, random mixed ones), both files in a default session (1 thread) against the
in-memory searched model on 256 test images, and their latency at batch 1 and 64 (best of
round-robin rounds, :func:`automl.export.ort.best_ms`).

Prints one row per policy and ``RESULT exact_argmax_min=... int8_kernels_argmax_min=...
exact_over_int8_b1=... exact_over_int8_b64=...`` (latency ratios: geometric means over the policies;
below 1 the exact file is faster). Each run appends one row to ``docs/results/onnx_exactness.jsonl``;
``--summarise`` writes the page of the saved runs, whose RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import results
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.zoo_support

TITLE = "Exact ONNX export: agreement with the searched model and latency"


def gmean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def figures(r: dict[str, Any]) -> str:
    p = r["policies"]
    return (f"exact_argmax_min={min(x['exact']['argmax'] for x in p):.4f} "
            f"int8_kernels_argmax_min={min(x['int8_kernels']['argmax'] for x in p):.4f} "
            f"exact_over_int8_b1={gmean([x['b1_ms'][0] / x['b1_ms'][1] for x in p]):.3f} "
            f"exact_over_int8_b64={gmean([x['b64_ms'][0] / x['b64_ms'][1] for x in p]):.3f}")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every run's policies; the RESULT line is the latest run's."""
    body = [(*results.when(r), x["label"], f"{x['exact']['argmax']:.4f}", f"{x['exact']['untied']:.3f}",
             f"{x['int8_kernels']['argmax']:.4f}", f"{x['b1_ms'][0]:.3f} / {x['b1_ms'][1]:.3f}",
             f"{x['b64_ms'][0]:.2f} / {x['b64_ms'][1]:.2f}") for r in rows for x in r["policies"]]
    table = results.md_table(("date", "commit", "policy", "exact: argmax", "exact: untied", "int8 kernels: argmax",
                              "batch 1 ms (exact / int8)", "batch 64 ms (exact / int8)"), body)
    return results.Summary((table,), "RESULT " + figures(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--random", type=int, default=3, help="random mixed policies besides the uniform ones")
    results.add_arguments(parser, "onnx_exactness")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
    from automl.export import ort
    from automl.export.ampq import export_policy
    from automl.export.onnx import ampq_to_onnx
    from automl.reference import reference_task
    from automl.timing import pin_threads
    from tests.zoo_support import onnx_agreement

    pin_threads(1)
    task = reference_task("resnet20")
    problem = Problem.from_task(task)
    ev = Evaluator(problem, EvalConfig())
    x = torch.cat([xb for xb, _ in task.test_loader])[:256]
    space = problem.space
    rng = np.random.default_rng(0)
    policies = {"uniform w8a8": space.uniform(8, 8), "uniform w4a8": space.uniform(4, 8),
                "w4a8 25% pruned": space.uniform(4, 8, sparsity=0.25)}
    policies.update({f"random {i}": space.sample(rng) for i in range(args.random)})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, policy in policies.items():
            policy = space.resolve(policy)
            model = ev.prepare_final(policy)
            path = Path(tmp) / "m.ampq"
            export_policy(model, problem.analysis, policy, path, sample_input=x[:8], float_model=ev.float_model, repeats=1)
            blobs = [ampq_to_onnx(path).SerializeToString(), ampq_to_onnx(path, int8_kernels=True).SerializeToString()]
            agree = [onnx_agreement(model, problem.analysis, policy, b, x) for b in blobs]
            sessions = [ort.session(b, 1) for b in blobs]
            b1 = ort.best_ms([ort.runner(s, x[:1].numpy()) for s in sessions], args.repeats)
            b64 = ort.best_ms([ort.runner(s, x[:64].numpy()) for s in sessions], max(2, args.repeats // 5), inner=2)
            rows.append({"label": label, "exact": {k: float(v) for k, v in agree[0].items()},
                         "int8_kernels": {k: float(v) for k, v in agree[1].items()},
                         "b1_ms": [float(v) for v in b1], "b64_ms": [float(v) for v in b64]})
            print(f"{label:18s} exact: argmax {agree[0]['argmax']:.4f} max diff {agree[0]['max_diff']:.3g} "
                  f"(tied {agree[0]['tied']:.3f}, untied {agree[0]['untied']:.3f}) | int8 kernels: argmax "
                  f"{agree[1]['argmax']:.4f} max diff {agree[1]['max_diff']:.3g} (untied {agree[1]['untied']:.3f}) | "
                  f"b1 {b1[0]:.3f} vs {b1[1]:.3f} ms, b64 {b64[0]:.2f} vs {b64[1]:.2f} ms", flush=True)

    row = {"arch": "resnet20", "images": len(x), "repeats": args.repeats, "policies": rows}
    return results.finish(args, [row], "onnx_exactness", summary, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
