"""The research options against their absence on the reference networks (issue 12).

For ResNet-8 and ResNet-20 (cached reference nets, one torch thread):

1. AdaQuant: uniform W4A4 / W3A3 / W2A4 PTQ validation accuracy with round-to-nearest and
   with AdaQuant, at fidelity 1 (PTQ) and fidelity 2 (+ BatchNorm re-estimation), and the
   seconds one fidelity-2 evaluation takes either way.
2. Data-free calibration: uniform W8A8 / W4A4 / W3A3 at fidelity 2, calibrated on the 500
   real calibration images or on inputs synthesised from the BatchNorm statistics.
4. PSG: test accuracy after the final fine-tune's recipe run for exactly ``--finetune-steps``
   QAT steps (keep-best and early stop off, so both sides train the same steps) of uniform
   W2A4 and W3A3 with and without PSG, same seed.
5. Power-of-two scales: W8A8 / W4A4 at fidelities 1 and 2 with arbitrary and with
   power-of-two scales, and the bitserial latency of W8A8 / W4A4 with a multiplier
   requantizer (0.125 ns per output) against the shift-only ``bitserial_shift`` profile.

3. N:M sparsity (:mod:`automl.quant.nm`, masks only, not a search dimension yet): every layer but
   the pinned first and last at 2:4, transposable 2:4 and 1:4, 4:8, against unstructured
   magnitude pruning at the same density per layer; validation accuracy of the masked float
   network (no fine-tune, no BatchNorm re-estimation) and of W8A8 at fidelity 2, and the
   mask diversity (log10 of the number of allowed masks over the masked layers).
Accuracies in points (percent); gains are with minus without, averaged over the networks.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import replace

from automl.cost.model import CostModel
from automl.cost.profiles import load_profile, profile_from_dict
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.finetune import FinetuneConfig
from automl.quant.adaquant import AdaQuantConfig, adaquant
from automl.quant.nm import log10_mask_diversity, sparsify
from automl.reference.checkpoints import reference_task
from automl.timing import pin_threads

PTQ_POLICIES = ((4, 4), (3, 3), (2, 4))
DATAFREE_POLICIES = ((8, 8), (4, 4), (3, 3))
PSG_POLICIES = ((2, 4), (3, 3))
POW2_POLICIES = ((8, 8), (4, 4))
NM_PATTERNS = (("2:4", "unstructured:0.5"), ("2:4-T", "unstructured:0.5"), ("1:4", "unstructured:0.25"),
               ("4:8", "unstructured:0.5"))
MULTIPLIER_REQUANT_NS = 0.125


def _pts(x: float) -> str:
    return f"{100 * x:.2f}"


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def adaquant_rows(arch: str, ev: Evaluator, steps: int) -> dict[str, float]:
    out: dict[str, float] = {}
    space = ev.problem.space
    for wb, ab in PTQ_POLICIES:
        pol = space.uniform(wb, ab)
        f1 = ev.evaluate(pol, 1)
        f2 = ev.evaluate(pol, 2)
        start = time.perf_counter()
        ev.engine.apply(pol)
        report = adaquant(ev.engine, ev._bn_batch, AdaQuantConfig(steps=steps, seed=ev.seed))
        a1 = ev._score(ev.engine.qmodel, "val", 1, start)
        ev.engine.reestimate_batchnorm(ev._bn_batch)
        a2 = ev._score(ev.engine.qmodel, "val", 2, start)
        mse = sum(f.adaquant_mse for f in report.layers) / max(sum(f.rtn_mse for f in report.layers), 1e-30)
        print(f"| {arch} | W{wb}A{ab} | {_pts(f1.accuracy)} / {_pts(f2.accuracy)} | {_pts(a1.accuracy)} / {_pts(a2.accuracy)} "
              f"| {mse:.3f} | {f2.seconds:.1f} | {a2.seconds:.1f} |", flush=True)
        out[f"w{wb}a{ab}_f1"] = a1.accuracy - f1.accuracy
        out[f"w{wb}a{ab}_f2"] = a2.accuracy - f2.accuracy
        out[f"w{wb}a{ab}_sec_ratio"] = a2.seconds / f2.seconds
    return out


def datafree_rows(arch: str, problem: Problem, ev: Evaluator) -> dict[str, float]:
    start = time.perf_counter()
    synth = Evaluator(problem, ev.config.replace(calibration="data-free"), seed=ev.seed)
    seconds = time.perf_counter() - start
    out: dict[str, float] = {"seconds": seconds}
    for wb, ab in DATAFREE_POLICIES:
        pol = problem.space.uniform(wb, ab)
        real, fake = ev.evaluate(pol, 2).accuracy, synth.evaluate(pol, 2).accuracy
        print(f"| {arch} | W{wb}A{ab} | {_pts(real)} | {_pts(fake)} | {_pts(real - fake)} |", flush=True)
        out[f"w{wb}a{ab}_gap"] = real - fake
    print(f"| {arch} | (synthesis + engine build: {seconds:.0f} s, {synth.config.datafree_samples} images) | | | |", flush=True)
    return out


def psg_rows(arch: str, ev: Evaluator, steps: int, strength: float, seeds: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for wb, ab in PSG_POLICIES:
        pol = ev.problem.space.uniform(wb, ab)
        gains = []
        for seed in seeds:
            # Equal steps on both sides: no keep-best and no early stop, which would return the same
            # pre-fine-tune checkpoint for both whenever validation does not improve and hide PSG.
            recipe = FinetuneConfig(steps=steps, keep_best=False, patience=0)
            plain = ev.final(pol, steps, "test", finetune=recipe.replace(psg=0.0), seed=seed)[0]
            psg = ev.final(pol, steps, "test", finetune=recipe.replace(psg=strength), seed=seed)[0]
            gains.append(psg.accuracy - plain.accuracy)
            print(f"| {arch} | W{wb}A{ab} | {seed} | {_pts(plain.accuracy)} | {_pts(psg.accuracy)} | {_pts(gains[-1])} "
                  f"| {plain.seconds:.0f} / {psg.seconds:.0f} |", flush=True)
        out[f"w{wb}_gain"] = sum(gains) / len(gains)
    return out


def pow2_rows(arch: str, problem: Problem, ev: Evaluator) -> dict[str, float]:
    p2 = Evaluator(problem, ev.config.replace(power_of_two=True), seed=ev.seed)
    base = load_profile("bitserial").to_dict()
    mult = profile_from_dict({**base, "name": "bitserial_multiplier", "requant_ns": MULTIPLIER_REQUANT_NS})
    cm = CostModel(problem.analysis, problem.space, [mult, load_profile("bitserial_shift")])
    out: dict[str, float] = {}
    for wb, ab in POW2_POLICIES:
        pol = problem.space.uniform(wb, ab)
        a = [ev.evaluate(pol, f).accuracy for f in (1, 2)]
        b = [p2.evaluate(pol, f).accuracy for f in (1, 2)]
        lat = dict(cm.price(pol).latency_ms)
        print(f"| {arch} | W{wb}A{ab} | {_pts(a[0])} / {_pts(a[1])} | {_pts(b[0])} / {_pts(b[1])} | {_pts(a[1] - b[1])} "
              f"| {lat['bitserial_multiplier'] * 1e3:.1f} | {lat['bitserial_shift'] * 1e3:.1f} |", flush=True)
        out[f"w{wb}a{ab}_cost"] = a[1] - b[1]
    return out


def nm_rows(arch: str, problem: Problem, ev: Evaluator) -> dict[str, float]:
    task = problem.task
    skip = (problem.analysis.layers[0].name, problem.analysis.layers[-1].name)
    pol = problem.space.uniform(8, 8)
    out: dict[str, float] = {}
    cache: dict[str, tuple[float, float, float]] = {}

    def measure(pattern: str) -> tuple[float, float, float]:
        if pattern not in cache:
            model, density = sparsify(task.model, problem.analysis, pattern, skip)
            sub = Problem(replace(task, model=model), problem.analysis, problem.space, problem.device)
            sev = Evaluator(sub, ev.config)
            elems = sum(model.get_submodule(n).weight.numel() for n in density)
            cache[pattern] = (sev.baseline().accuracy, sev.evaluate(pol, 2).accuracy, log10_mask_diversity(pattern, elems))
        return cache[pattern]

    for nm, unstructured in NM_PATTERNS:
        a, b = measure(nm), measure(unstructured)
        print(f"| {arch} | {nm} vs {unstructured} | {_pts(a[0])} / {_pts(a[1])} | {_pts(b[0])} / {_pts(b[1])} "
              f"| {_pts(a[1] - b[1])} | {a[2]:.0f} / {b[2]:.0f} |", flush=True)
        out[f"{nm}_minus"] = a[1] - b[1]
    return out


def _mean(rows: dict[str, dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows.values() if key in r]
    return sum(vals) / len(vals) if vals else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="+", default=["resnet8", "resnet20"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--adaquant-steps", type=int, default=60)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--psg", type=float, default=1.0)
    parser.add_argument("--psg-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--items", nargs="+", default=["adaquant", "datafree", "nm", "psg", "pow2"])
    args = parser.parse_args()
    pin_threads(args.threads)
    print(f"load average at start: {_load()}", flush=True)
    problems = {a: Problem.from_task(reference_task(a)) for a in args.archs}
    evs = {a: Evaluator(p, EvalConfig()) for a, p in problems.items()}
    res: dict[str, dict[str, dict[str, float]]] = {}
    if "adaquant" in args.items:
        print("\n### 1. AdaQuant (val accuracy %, fidelity 1 / fidelity 2)\n")
        print("| network | policy | round-to-nearest f1 / f2 | AdaQuant f1 / f2 | layer MSE ratio | s/eval RTN | s/eval AdaQuant |")
        print("|---|---|---|---|---|---|---|")
        res["adaquant"] = {a: adaquant_rows(a, evs[a], args.adaquant_steps) for a in args.archs}
    if "datafree" in args.items:
        print("\n### 2. Data-free calibration (val accuracy %, fidelity 2)\n")
        print("| network | policy | real calibration | synthetic from BN | gap |")
        print("|---|---|---|---|---|")
        res["datafree"] = {a: datafree_rows(a, problems[a], evs[a]) for a in args.archs}
    if "nm" in args.items:
        print("\n### 3. N:M sparsity (val accuracy %, masked float / W8A8 fidelity 2; log10 mask diversity)\n")
        print("| network | pattern | N:M float / W8A8 f2 | unstructured float / W8A8 f2 | N:M minus unstructured (f2) | diversity N:M / unstructured |")
        print("|---|---|---|---|---|---|")
        res["nm"] = {a: nm_rows(a, problems[a], evs[a]) for a in args.archs}
    if "psg" in args.items:
        print(f"\n### 4. PSG (test accuracy % after {args.finetune_steps} fine-tune steps, strength {args.psg})\n")
        print("| network | policy | seed | plain | PSG | gain | seconds plain / PSG |")
        print("|---|---|---|---|---|---|---|")
        res["psg"] = {a: psg_rows(a, evs[a], args.finetune_steps, args.psg, args.psg_seeds) for a in args.archs}
    if "pow2" in args.items:
        print("\n### 5. Power-of-two scales (val accuracy %, fidelity 1 / 2; bitserial latency in us)\n")
        print("| network | policy | arbitrary scales | power-of-two scales | cost (f2) | multiplier requant us | shift-only us |")
        print("|---|---|---|---|---|---|---|")
        res["pow2"] = {a: pow2_rows(a, problems[a], evs[a]) for a in args.archs}
    print(f"\nload average at end: {_load()}")
    r = {
        "adaquant_gain_w3a3": 100 * _mean(res.get("adaquant", {}), "w3a3_f2"),
        "datafree_gap_w4a4": 100 * _mean(res.get("datafree", {}), "w4a4_gap"),
        "nm24_minus_unstructured": 100 * _mean(res.get("nm", {}), "2:4_minus"),
        "psg_gain_w2": 100 * _mean(res.get("psg", {}), "w2_gain"),
        "adaquant_gain_w3a3_f1": 100 * _mean(res.get("adaquant", {}), "w3a3_f1"),
        "adaquant_gain_w2a4": 100 * _mean(res.get("adaquant", {}), "w2a4_f2"),
        "adaquant_seconds_ratio_w3a3": _mean(res.get("adaquant", {}), "w3a3_sec_ratio"),
        "nm24t_minus_unstructured": 100 * _mean(res.get("nm", {}), "2:4-T_minus"),
        "psg_gain_w3": 100 * _mean(res.get("psg", {}), "w3_gain"),
        "pow2_cost_w8a8": 100 * _mean(res.get("pow2", {}), "w8a8_cost"),
        "pow2_cost_w4a4": 100 * _mean(res.get("pow2", {}), "w4a4_cost"),
    }
    print("RESULT " + " ".join(f"{k}={v:.2f}" if not math.isnan(v) else f"{k}=nan" for k, v in r.items()))


if __name__ == "__main__":
    main()
