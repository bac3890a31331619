"""How much smaller an N:M policy's .ampq file is than the same policy dense, and its price.

On the reference ResNet-8 architecture (random weights with a fixed seed: a file's size does
not depend on the weight values, only its compressed header varies by a few bytes), every
free layer at ``--bits`` weight bits and 8-bit activations, exported four ways: dense, every
layer that allows it at 2:4, at 4:8 and at 2:4-T (the first and last layers are pinned at 8
bits and stay dense). For each file it prints its bytes, the cost model's size price
(:func:`automl.export.ampq.container_bytes` included) and their ratio; the RESULT line gives the
N:M files over the dense one and the largest real/priced deviation. No timing: the numbers
do not depend on the machine's load. Each run appends one row to ``docs/results/nm_export_size.jsonl``;
``--summarise`` writes the page of the saved runs, whose RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import results
import torch

from automl.analysis import analyse
from automl.cost import CostModel
from automl.export.ampq import container_bytes, export_policy
from automl.quant.engine import QuantEngine
from automl.reference.models import REFERENCE_MODELS
from search_spaces import LayerPolicy, Policy, SearchSpace, SpaceConfig

TITLE = "N:M export size: .ampq files against their price"
PATTERNS = ("2:4", "4:8", "2:4-T")


def with_pattern(space: SearchSpace, dense: Policy, pattern: str) -> Policy:
    """``dense`` with every layer that allows ``pattern`` at it."""
    return Policy(tuple((n, LayerPolicy(lp.act_bits, lp.weight_bits, pattern if pattern in s.nm_patterns else ""))
                        for (n, lp), s in zip(dense, space.layers, strict=True)))


def figures(r: dict[str, Any]) -> str:
    sizes = {f["label"]: f["file_bytes"] for f in r["files"]}
    worst = max(abs(f["file_bytes"] / f["priced_bytes"] - 1) for f in r["files"])
    return (f"arch={r['arch']} bits={r['bits']} dense_bytes={sizes['dense']} "
            + " ".join(f"{p.replace(':', 'of').replace('-', '')}_over_dense={sizes[p] / sizes['dense']:.3f}"
                       for p in PATTERNS)
            + f" max_real_over_priced_dev={worst:.4f}")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every run's files; the RESULT line is the latest run's."""
    body = [(*results.when(r), f"{r['arch']}, {r['bits']} bits", f["label"], f["nm_layers"], f["file_bytes"],
             f"{f['priced_bytes']:.0f}", f"{f['file_bytes'] / f['priced_bytes']:.4f}") for r in rows for f in r["files"]]
    table = results.md_table(("date", "commit", "network, weight bits", "file", "N:M layers", "file bytes",
                              "priced bytes", "real / priced"), body)
    return results.Summary((table,), "RESULT " + figures(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet8", choices=sorted(REFERENCE_MODELS))
    parser.add_argument("--bits", type=int, default=4)
    results.add_arguments(parser, "nm_export_size")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    torch.manual_seed(0)
    model = REFERENCE_MODELS[args.arch]().eval()
    sample = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    analysis = analyse(model, sample[:1])
    space = SearchSpace.build(analysis, SpaceConfig(nm_patterns=PATTERNS))
    cost = CostModel(analysis, space, container_bytes=container_bytes(model, analysis, space, sample[:1]))
    engine = QuantEngine(model, analysis, space, [sample])
    dense = space.uniform(args.bits, 8)
    policies = {"dense": dense, **{p: with_pattern(space, dense, p) for p in PATTERNS}}
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, policy in policies.items():
            report = export_policy(engine.apply(policy), analysis, policy, Path(tmp) / f"{label}.ampq",
                                   sample_input=sample, float_model=model, cost_model=cost, repeats=1)
            layers = sum(1 for _, lp in policy if lp.nm)
            ratio = report.file_bytes / report.predicted_bytes
            files.append({"label": label, "nm_layers": layers, "file_bytes": report.file_bytes,
                          "priced_bytes": float(report.predicted_bytes), "max_abs_diff": float(report.max_abs_diff)})
            print(f"{label:6s} N:M layers={layers:2d} file_bytes={report.file_bytes} "
                  f"priced_bytes={report.predicted_bytes:.0f} real_over_priced={ratio:.4f} "
                  f"max_abs_diff={report.max_abs_diff:.2e}")
    return results.finish(args, [{"arch": args.arch, "bits": args.bits, "files": files}], "nm_export_size", summary)


if __name__ == "__main__":
    raise SystemExit(main())
