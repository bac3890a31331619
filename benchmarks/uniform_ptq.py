"""Float accuracy of the reference networks and their uniform-precision PTQ accuracies.

For ResNet-8 and ResNet-20: float test accuracy, then validation accuracy of uniform
8/6/4/3/2-bit weights and activations (first and last layers pinned at 8 bits) at
fidelity 1 (PTQ) and fidelity 2 (PTQ + BatchNorm re-estimation). One row per network is appended
to ``docs/results/uniform_ptq.jsonl``; ``--summarise`` writes the page of the saved rows, whose
RESULT line is over the latest row of each network.
"""

from __future__ import annotations

import argparse
from typing import Any

import results

TITLE = "Reference networks: float and uniform-precision PTQ accuracies"
BITS = (8, 6, 4, 3, 2)


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """One line per saved row; the RESULT line over the latest row of each network."""
    body = [(*results.when(r), r["arch"], f"{r['float_val']:.4f}", f"{r['float_test']:.4f}",
             *(f"{r['f1'][str(b)]:.4f} / {r['f2'][str(b)]:.4f}" for b in BITS)) for r in rows]
    table = results.md_table(("date", "commit", "network", "float val", "float test",
                              *(f"W{b}A{b} val (f1 / f2)" for b in BITS)), body)
    latest = {r["arch"]: r for r in rows}
    figures: dict[str, float] = {}
    for arch, r in latest.items():
        figures.update({f"{arch}_w{b}": r["f1"][str(b)] for b in BITS})
        figures[f"{arch}_float_test"] = r["float_test"]
    return results.Summary((table,), "RESULT " + " ".join(f"{k}={v:.4f}" for k, v in figures.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="+", default=["resnet8", "resnet20"])
    parser.add_argument("--threads", type=int, default=1)
    results.add_arguments(parser, "uniform_ptq")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
    from automl.reference.checkpoints import reference_task
    from automl.timing import pin_threads

    pin_threads(args.threads)
    rows = []
    for arch in args.archs:
        problem = Problem.from_task(reference_task(arch))
        ev = Evaluator(problem, EvalConfig())
        row: dict[str, Any] = {"arch": arch, "float_val": ev.baseline().accuracy, "float_test": ev.baseline("test").accuracy,
                               "f1": {}, "f2": {}}
        for b in BITS:
            pol = problem.space.uniform(b, b)
            row["f1"][str(b)], row["f2"][str(b)] = ev.evaluate(pol, 1).accuracy, ev.evaluate(pol, 2).accuracy
        print(f"{arch}: float val {row['float_val']:.4f}, test {row['float_test']:.4f}; "
              + ", ".join(f"W{b}A{b} {row['f1'][str(b)]:.4f} / {row['f2'][str(b)]:.4f}" for b in BITS), flush=True)
        rows.append(row)
    return results.finish(args, rows, "uniform_ptq", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
