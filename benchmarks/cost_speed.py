"""How fast the cost model prices policies of ResNet-20 (22 layers).

Prices the same pool of random policies one at a time through ``CostModel.price`` (with no
hardware profile, and with the shipped bit-serial and CPU-roofline profiles), and in batches of
50 through ``CostModel.price_batch`` (what an action mask needs). Each figure is the best of a
few timed passes, since the machine is shared; as a baseline from the same run, the time of
one small NumPy operation (an add of two 22-element arrays, the unit of work of a price) is
reported too, so that ``price_in_numpy_ops`` compares across machines and loads. The target
is 5,000 policies per second through ``price``.

Each run appends one row to ``docs/results/cost_speed.jsonl``; ``--summarise`` writes the page of
the saved runs, whose RESULT line is the latest run's.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import results
import torch

from automl.analysis import analyse
from automl.cost import CostModel, load_profiles
from automl.reference.models import REFERENCE_MODELS
from automl.timing import pin_threads
from search_spaces import SearchSpace

TITLE = "Cost model speed: policies priced per second"


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def figures(r: dict[str, Any]) -> str:
    n = r["batch"]
    return (f"policies_priced_per_s={r['rate_profiles']:.0f} "
            f"policies_priced_per_s_no_profile={r['rate_no_profile']:.0f} "
            f"batch{n}_ms={r['batch_s'] * 1e3:.3f} batch_policies_per_s={n / r['batch_s']:.0f} "
            f"price_in_numpy_ops={1 / r['rate_profiles'] / r['numpy_op_s']:.0f}")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """One line per run; the RESULT line is the latest run's."""
    table = results.runs_table(rows, [("network", lambda r: r["arch"]), ("policies", lambda r: r["policies"]),
                                      ("figures", figures)])
    return results.Summary((table,), "RESULT " + figures(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet20", choices=sorted(REFERENCE_MODELS))
    parser.add_argument("--policies", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    results.add_arguments(parser, "cost_speed")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    pin_threads(args.threads)
    analysis = analyse(REFERENCE_MODELS[args.arch](), torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis)
    rng = np.random.default_rng(0)
    policies = [space.sample(rng) for _ in range(args.policies)]
    bare = CostModel(analysis, space)
    full = CostModel(analysis, space, load_profiles(["bitserial", "accel_roofline"]))
    print(f"{args.arch}: {len(analysis.layers)} layers, {full.n_channels} output channels, {len(policies)} policies")

    a, b = np.ones((1, 22)), np.ones((1, 22))
    numpy_op = best_seconds(lambda: [np.add(a, b) for _ in range(10000)], args.repeats) / 10000
    print(f"baseline       one small NumPy add           {numpy_op * 1e6:9.3f} us")

    rates = {}
    for label, cm in (("no profile", bare), ("bitserial + accel_roofline", full)):
        seconds = best_seconds(lambda cm=cm: [cm.price(p) for p in policies], args.repeats)
        rates[label] = len(policies) / seconds
        print(f"price()        {label:<26} {rates[label]:9.0f} policies/s  ({seconds / len(policies) * 1e6:6.1f} us each)")

    n = args.batch
    weight_bits = [np.array([p[name].weight_bits for p in policies[:n]]) for name in space.names]
    act = np.array([[lp.act_bits for _, lp in p] for p in policies[:n]])
    batch_s = best_seconds(lambda: [full.price_batch(weight_bits, act) for _ in range(20)], args.repeats) / 20
    print(f"price_batch()  {n} policies, both profiles  {batch_s * 1e3:9.3f} ms per batch "
          f"({n / batch_s:9.0f} policies/s)")
    row = {"arch": args.arch, "policies": len(policies), "batch": n, "rate_profiles": rates["bitserial + accel_roofline"],
           "rate_no_profile": rates["no profile"], "batch_s": batch_s, "numpy_op_s": numpy_op}
    return results.finish(args, [row], "cost_speed", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
