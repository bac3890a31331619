"""What the GPU speed options of ``EvalConfig`` do to scores, and how often an evaluation reads the device.

On the reference ResNet-20, random policies at fidelity 2 are scored with the defaults and with
each option (``eval_batch_size``, ``channels_last``, ``tf32``); printed: whether the scores are
identical and the largest differences. Then the calls that wait for a GPU (``.item()``,
``float(tensor)``, ``bool(tensor)``, ``.nonzero()``, ``.cpu()``, ...) are counted per evaluation and
per Hessian estimate. Run it on the CPU, or on a GPU with ``--device cuda`` (there ``tf32``
changes the arithmetic).

    python benchmarks/eval_options.py [--device cuda] [--policies 20] [--threads 1]
    python benchmarks/eval_options.py --summarise docs/results/eval_options.jsonl   # the page of the saved runs

Each run appends one row (``docs/results/eval_options.jsonl``); the RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import results
import torch
from torch.overrides import TorchFunctionMode

from automl.evaluation.curvature import CurvatureConfig, curvature_sensitivities
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.reference.checkpoints import reference_task
from automl.timing import pin_threads

READS = {torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.tolist,
         torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.__index__}


class HostReads(TorchFunctionMode):
    """Counts calls that make the host wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.n += func in READS
        return func(*args, **(kwargs or {}))


TITLE = "Evaluation speed options: scores unchanged, host reads per evaluation"


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every run's option comparisons and host-read counts; the RESULT line is the latest run's."""
    options = results.md_table(
        ("date", "commit", "device", "option", "loader batches", "identical", "max |d accuracy| (points)", "max |d kl|"),
        [(*results.when(r), r["device"], o["name"], o["batches"], o["identical"], f"{o['max_accuracy_points']:.4f}",
          f"{o['max_kl']:.2e}") for r in rows for o in r["options"]])
    reads = results.md_table(
        ("date", "commit", "device", "host reads per evaluation, fidelity 1", "fidelity 2", "per Hessian estimate"),
        [(*results.when(r), r["device"], r["reads_fidelity_1"], r["reads_fidelity_2"], r["reads_hessian"]) for r in rows])
    last = rows[-1]
    same = " ".join(f"identical_{o['name'].replace('=', '_')}={int(o['identical'])}" for o in last["options"])
    return results.Summary((options, reads), f"RESULT {same} host_reads_fid1={last['reads_fidelity_1']:.0f} "
                           f"host_reads_fid2={last['reads_fidelity_2']:.0f} host_reads_hessian={last['reads_hessian']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    results.add_arguments(parser, "eval_options")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    pin_threads(args.threads)
    task = reference_task("resnet20", log=None)
    problem = Problem.from_task(task, device=args.device)
    rng = np.random.default_rng(0)
    policies = [problem.space.sample(rng) for _ in range(args.policies)]

    def scores(**options: object) -> tuple[np.ndarray, int, int]:
        ev = Evaluator(problem, EvalConfig(fidelity=2, bn_samples=0, early_stop=False, **options))  # type: ignore[arg-type]
        xs = ev._split("val")[0]
        return np.array([[m.accuracy, m.loss, m.kl] for m in (ev.evaluate(p) for p in policies)]), \
            sum(len(x) for x in xs), len(xs)

    base, n, batches = scores()
    print(f"reference resnet20 on {problem.device}, {n} validation images in {batches} loader batches, "
          f"{len(policies)} random policies at fidelity 2")
    row: dict[str, Any] = {"device": str(problem.device), "policies": len(policies), "images": n, "options": []}
    for name, options in (("eval_batch_size=64", {"eval_batch_size": 64}), ("eval_batch_size=all", {"eval_batch_size": n}),
                          ("channels_last", {"channels_last": True}), ("tf32", {"tf32": True})):
        s, _, k = scores(**options)
        d = np.abs(s - base)
        print(f"{name:20s} batches={k:3d} identical={bool((d == 0).all())} max|d accuracy|={d[:, 0].max() * 100:.4f} points "
              f"max|d loss|={d[:, 1].max():.2e} max|d kl|={d[:, 2].max():.2e}")
        row["options"].append({"name": name, "batches": k, "identical": bool((d == 0).all()),
                               "max_accuracy_points": float(d[:, 0].max() * 100), "max_loss": float(d[:, 1].max()),
                               "max_kl": float(d[:, 2].max())})
    for fidelity in (1, 2):
        ev = Evaluator(problem, EvalConfig(fidelity=fidelity, bn_samples=0, early_stop=False, incremental=False))
        ev.evaluate(policies[0])
        with HostReads() as reads:
            for p in policies[1:6]:
                ev.evaluate(p)
        print(f"fidelity {fidelity}: {reads.n / 5:.0f} host reads per evaluation")
        row[f"reads_fidelity_{fidelity}"] = reads.n / 5
    xs = ev._split("val")[0]
    with HostReads() as reads:
        curvature_sensitivities(ev.engine, problem.space, xs, "hessian", CurvatureConfig(samples=128, batch_size=32))
    print(f"hessian sensitivities, 4 batches of 32, 2 probes: {reads.n} host reads (the table's, at the end)")
    row["reads_hessian"] = reads.n
    return results.finish(args, [row], "eval_options", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
