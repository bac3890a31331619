"""How many calibration images BatchNorm re-estimation (fidelity 2) needs.

Scores every uniform (weight bits, activation bits, sparsity) policy of ResNet-20's space
with W in {2, 3, 4}, A in {2, 3, 4, 8} and sparsity in {0, 0.25} at fidelity 2, with the
BatchNorm statistics re-estimated on all 500 calibration images and on fewer, without early
stopping or activation caching (so the seconds compare like for like), and prints the rank
agreement and the seconds per evaluation.

    python benchmarks/bn_samples.py [--samples 250 128] [--threads 1]
    python benchmarks/bn_samples.py --summarise docs/results/bn_samples.jsonl   # the page of the saved runs

Each run appends one row (``docs/results/bn_samples.jsonl``); the RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import results
from scipy.stats import spearmanr

from automl.errors import AutoMLError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.reference.checkpoints import reference_task
from automl.timing import pin_threads
from search_spaces.space import SpaceConfig

TITLE = "BatchNorm re-estimation: how many calibration images"


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every run's comparisons against all 500 images; the RESULT line is the latest run's."""
    body = [(*results.when(r), r["arch"], r["policies"], c["samples"], f"{c['spearman']:.3f}",
             f"{c['mean_abs_diff']:.2f}", f"{c['max_abs_diff']:.2f}", f"{c['time_ratio']:.2f}")
            for r in rows for c in r["by_samples"]]
    table = results.md_table(("date", "commit", "network", "policies", "samples", "Spearman vs all",
                              "mean abs diff (points)", "max abs diff", "time ratio"), body)
    last = rows[-1]["by_samples"]
    out = [f"spearman_{c['samples']}={c['spearman']:.3f} mean_abs_diff_{c['samples']}={c['mean_abs_diff']:.2f} "
           f"time_ratio_{c['samples']}={c['time_ratio']:.2f}" for c in last]
    return results.Summary((table,), "RESULT " + " ".join(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--samples", type=int, nargs="+", default=[250])
    parser.add_argument("--threads", type=int, default=1)
    results.add_arguments(parser, "bn_samples")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    pin_threads(args.threads)
    problem = Problem.from_task(reference_task(args.arch), SpaceConfig())
    policies = []
    for w in (2, 3, 4):
        for a in (2, 3, 4, 8):
            for sparsity in (0.0, 0.25):
                try:
                    policies.append(problem.space.uniform(w, a, sparsity))
                except AutoMLError:
                    continue
    scores: dict[int, np.ndarray] = {}
    seconds: dict[int, float] = {}
    for n in (0, *args.samples):
        ev = Evaluator(problem, EvalConfig(fidelity=2, bn_samples=n, early_stop=False, incremental=False))
        ev.evaluate(policies[0])  # warm-up
        start = time.perf_counter()
        scores[n] = np.array([ev.evaluate(p).accuracy for p in policies])
        seconds[n] = (time.perf_counter() - start) / len(policies)
        print(f"bn_samples={n or 'all'}: {seconds[n]:.2f} s per evaluation", flush=True)
    by_samples = []
    for n in args.samples:
        rho = spearmanr(scores[0], scores[n])[0]
        diff = np.abs(scores[0] - scores[n]) * 100
        print(f"{n} vs all over {len(policies)} policies: Spearman {rho:.3f}, mean |diff| {diff.mean():.2f} points, "
              f"max {diff.max():.2f}, time ratio {seconds[n] / seconds[0]:.2f}")
        by_samples.append({"samples": n, "spearman": float(rho), "mean_abs_diff": float(diff.mean()),
                           "max_abs_diff": float(diff.max()), "time_ratio": seconds[n] / seconds[0],
                           "seconds_per_eval": seconds[n]})
    row = {"arch": args.arch, "policies": len(policies), "seconds_per_eval_all": seconds[0], "by_samples": by_samples}
    return results.finish(args, [row], "bn_samples", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
