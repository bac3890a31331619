"""How well a measured latency profile predicts the latency of physically pruned networks.

Builds a measured profile of ResNet-20 (random weights: timing does not depend on them) with
:func:`automl.cost.measure.profile_hardware`, then for random float pruning policies compares
the profile's prediction (:meth:`CostModel.price`) with the measured latency of the network
that :func:`automl.analysis.prune.prune_model` physically shrinks, timed at batch 1 with
threads pinned by :func:`automl.cost.measure.interleaved_ms` exactly as the profile's layers
were (round-robin over all networks, so that load from other processes hits every network
alike; the best run is kept, see its docstring for why not the median).
Reports the rank correlation and the median relative error.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from automl.analysis import analyse
from automl.analysis.prune import prune_model
from automl.cost import CostModel, latency_metric, load_profile
from automl.cost.measure import interleaved_ms, profile_hardware
from automl.errors import PolicyError
from automl.models import REFERENCE_MODELS
from automl.timing import pin_threads
from search_spaces import Policy, SearchSpace, SpaceConfig


def random_pruning(space: SearchSpace, rng: np.random.Generator) -> Policy:
    """Each layer at a random sparsity level up to a random per-policy ceiling (so the
    policies span light to heavy pruning, not only the average of uniform draws)."""
    ceiling = rng.uniform(0.0, 1.0)
    layers = []
    for s in space.layers:
        levels = [lv for lv in s.sparsity_levels if lv <= ceiling * max(s.sparsity_levels) + 1e-9]
        layers.append((s.name, space.decode(s.name, float(rng.choice(levels)), [32] * s.n_groups, 32)))
    return Policy(tuple(layers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet20", choices=sorted(REFERENCE_MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--policies", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=41, help="round-robin rounds per pruned network (best kept)")
    parser.add_argument("--profile-repeats", type=int, default=25, help="round-robin rounds per layer configuration (best kept)")
    parser.add_argument("--profile", type=Path, default=None, help="write (or reuse, with --reuse) the profile here")
    parser.add_argument("--reuse", action="store_true", help="reuse an existing --profile file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pin_threads(args.threads)
    torch.manual_seed(args.seed)
    model = REFERENCE_MODELS[args.arch]().eval()
    x = torch.randn(1, 1, 28, 28)
    analysis = analyse(model, x)
    path = args.profile or Path(tempfile.mkdtemp()) / f"{args.arch}-measured.yaml"
    if not (args.reuse and path.is_file()):
        profile_hardware(model, x, analysis, path, threads=args.threads, repeats=args.profile_repeats)
    profile = load_profile(path)
    # Float pruning policies: kept channels stay at 32 bits, so the float table applies.
    space = SearchSpace.build(analysis, SpaceConfig(weight_bits=(0, 32), act_bits=(32,), n_groups=1, pinned_bits=32))
    cm = CostModel(analysis, space, [profile])
    key = latency_metric(profile.name)
    rng = np.random.default_rng(args.seed)
    policies, nets = [], []
    while len(policies) < args.policies:
        policy = random_pruning(space, rng) if policies else space.uniform(32)
        try:
            nets.append(prune_model(model, analysis, policy).eval())
        except PolicyError:  # a coupled group lost every channel: not a network
            continue
        policies.append(policy)
    measured = interleaved_ms([lambda net=net: net(x) for net in nets], args.repeats)
    predicted = [cm.price(policy).value(key) for policy in policies]
    for policy, pred, ms in zip(policies, predicted, measured, strict=True):
        print(f"MACs {cm.price(policy).macs / 1e6:6.2f}M  predicted {pred:6.3f} ms  measured {ms:6.3f} ms")
    p, m = np.array(predicted), np.array(measured)
    rho = float(spearmanr(p, m).statistic)
    err = float(np.median(np.abs(p - m) / m))
    print(f"{args.arch}: {len(p)} pruned networks, {args.threads} thread(s), profile {path}")
    print(f"RESULT spearman={rho:.3f} median_abs_rel_error={err:.3f}")


if __name__ == "__main__":
    main()
