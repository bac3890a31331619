"""How many calibration images BatchNorm re-estimation (fidelity 2) needs.

Scores every uniform (weight bits, activation bits, sparsity) policy of ResNet-20's space
with W in {2, 3, 4}, A in {2, 3, 4, 8} and sparsity in {0, 0.25} at fidelity 2, with the
BatchNorm statistics re-estimated on all 500 calibration images and on fewer, without early
stopping or activation caching (so the seconds compare like for like), and prints the rank
agreement and the seconds per evaluation.

    python benchmarks/bn_samples.py [--samples 250 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import spearmanr

from automl.errors import AutoMLError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.reference.checkpoints import reference_task
from automl.timing import pin_threads
from search_spaces.space import SpaceConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--samples", type=int, nargs="+", default=[250])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
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
    out = []
    for n in args.samples:
        rho = spearmanr(scores[0], scores[n])[0]
        diff = np.abs(scores[0] - scores[n]) * 100
        print(f"{n} vs all over {len(policies)} policies: Spearman {rho:.3f}, mean |diff| {diff.mean():.2f} points, "
              f"max {diff.max():.2f}, time ratio {seconds[n] / seconds[0]:.2f}")
        out.append(f"spearman_{n}={rho:.3f} mean_abs_diff_{n}={diff.mean():.2f} time_ratio_{n}={seconds[n] / seconds[0]:.2f}")
    print("RESULT " + " ".join(out))


if __name__ == "__main__":
    main()
