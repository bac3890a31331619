"""Float accuracy of the reference networks and their uniform-precision PTQ accuracies.

For ResNet-8 and ResNet-20: float test accuracy, then validation accuracy of uniform
8/6/4/3/2-bit weights and activations (first and last layers pinned at 8 bits) at
fidelity 1 (PTQ) and fidelity 2 (PTQ + BatchNorm re-estimation).
"""

from __future__ import annotations

import argparse

from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.reference.checkpoints import reference_task
from automl.timing import pin_threads

BITS = (8, 6, 4, 3, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="+", default=["resnet8", "resnet20"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    pin_threads(args.threads)
    result = {}
    print("| network | float val | float test | " + " | ".join(f"W{b}A{b} val (f1 / f2)" for b in BITS) + " |")
    print("|---" * (3 + len(BITS)) + "|")
    for arch in args.archs:
        problem = Problem.from_task(reference_task(arch))
        ev = Evaluator(problem, EvalConfig())
        row = [f"{ev.baseline().accuracy:.4f}", f"{ev.baseline('test').accuracy:.4f}"]
        for b in BITS:
            pol = problem.space.uniform(b, b)
            f1, f2 = ev.evaluate(pol, 1).accuracy, ev.evaluate(pol, 2).accuracy
            row.append(f"{f1:.4f} / {f2:.4f}")
            result[f"{arch}_w{b}"] = f1
        result[f"{arch}_float_test"] = ev.baseline("test").accuracy
        print(f"| {arch} | " + " | ".join(row) + " |")
    print("RESULT " + " ".join(f"{k}={v:.4f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
