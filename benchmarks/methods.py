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
Every measurement is one row of ``docs/results/methods.jsonl`` (key ``item`` says which option);
``--summarise`` rebuilds the five tables and the RESULT line from every row of a rows file.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import replace
from typing import Any

import results

from automl.cost.model import CostModel
from automl.cost.profiles import load_profile, profile_from_dict
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.finetune import FinetuneConfig
from automl.quant.adaquant import AdaQuantConfig, adaquant
from automl.quant.nm import log10_mask_diversity, sparsify
from automl.reference.checkpoints import reference_task
from automl.timing import pin_threads

TITLE = "Research options against their absence"
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


def adaquant_rows(arch: str, ev: Evaluator, steps: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
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
        out.append({"item": "adaquant", "arch": arch, "policy": f"W{wb}A{ab}", "rtn_f1": f1.accuracy,
                    "rtn_f2": f2.accuracy, "ada_f1": a1.accuracy, "ada_f2": a2.accuracy, "mse_ratio": mse,
                    "rtn_seconds": f2.seconds, "ada_seconds": a2.seconds, "steps": steps})
    return out


def datafree_rows(arch: str, problem: Problem, ev: Evaluator) -> list[dict[str, Any]]:
    start = time.perf_counter()
    synth = Evaluator(problem, ev.config.replace(calibration="data-free"), seed=ev.seed)
    seconds = time.perf_counter() - start
    out: list[dict[str, Any]] = []
    for wb, ab in DATAFREE_POLICIES:
        pol = problem.space.uniform(wb, ab)
        real, fake = ev.evaluate(pol, 2).accuracy, synth.evaluate(pol, 2).accuracy
        print(f"| {arch} | W{wb}A{ab} | {_pts(real)} | {_pts(fake)} | {_pts(real - fake)} |", flush=True)
        out.append({"item": "datafree", "arch": arch, "policy": f"W{wb}A{ab}", "real": real, "synthetic": fake})
    print(f"| {arch} | (synthesis + engine build: {seconds:.0f} s, {synth.config.datafree_samples} images) | | | |", flush=True)
    out.append({"item": "datafree_synthesis", "arch": arch, "seconds": seconds, "images": synth.config.datafree_samples})
    return out


def psg_rows(arch: str, ev: Evaluator, steps: int, strength: float, seeds: list[int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for wb, ab in PSG_POLICIES:
        pol = ev.problem.space.uniform(wb, ab)
        for seed in seeds:
            # Equal steps on both sides: no keep-best and no early stop, which would return the same
            # pre-fine-tune checkpoint for both whenever validation does not improve and hide PSG.
            recipe = FinetuneConfig(steps=steps, keep_best=False, patience=0)
            plain = ev.final(pol, steps, "test", finetune=recipe.replace(psg=0.0), seed=seed)[0]
            psg = ev.final(pol, steps, "test", finetune=recipe.replace(psg=strength), seed=seed)[0]
            print(f"| {arch} | W{wb}A{ab} | {seed} | {_pts(plain.accuracy)} | {_pts(psg.accuracy)} "
                  f"| {_pts(psg.accuracy - plain.accuracy)} | {plain.seconds:.0f} / {psg.seconds:.0f} |", flush=True)
            out.append({"item": "psg", "arch": arch, "policy": f"W{wb}A{ab}", "seed": seed, "plain": plain.accuracy,
                        "psg": psg.accuracy, "plain_seconds": plain.seconds, "psg_seconds": psg.seconds,
                        "steps": steps, "strength": strength})
    return out


def pow2_rows(arch: str, problem: Problem, ev: Evaluator) -> list[dict[str, Any]]:
    p2 = Evaluator(problem, ev.config.replace(power_of_two=True), seed=ev.seed)
    base = load_profile("bitserial").to_dict()
    mult = profile_from_dict({**base, "name": "bitserial_multiplier", "requant_ns": MULTIPLIER_REQUANT_NS})
    cm = CostModel(problem.analysis, problem.space, [mult, load_profile("bitserial_shift")])
    out: list[dict[str, Any]] = []
    for wb, ab in POW2_POLICIES:
        pol = problem.space.uniform(wb, ab)
        a = [ev.evaluate(pol, f).accuracy for f in (1, 2)]
        b = [p2.evaluate(pol, f).accuracy for f in (1, 2)]
        lat = dict(cm.price(pol).latency_ms)
        print(f"| {arch} | W{wb}A{ab} | {_pts(a[0])} / {_pts(a[1])} | {_pts(b[0])} / {_pts(b[1])} | {_pts(a[1] - b[1])} "
              f"| {lat['bitserial_multiplier'] * 1e3:.1f} | {lat['bitserial_shift'] * 1e3:.1f} |", flush=True)
        out.append({"item": "pow2", "arch": arch, "policy": f"W{wb}A{ab}", "arb_f1": a[0], "arb_f2": a[1], "p2_f1": b[0],
                    "p2_f2": b[1], "mult_us": lat["bitserial_multiplier"] * 1e3, "shift_us": lat["bitserial_shift"] * 1e3})
    return out


def nm_rows(arch: str, problem: Problem, ev: Evaluator) -> list[dict[str, Any]]:
    task = problem.task
    skip = (problem.analysis.layers[0].name, problem.analysis.layers[-1].name)
    pol = problem.space.uniform(8, 8)
    out: list[dict[str, Any]] = []
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
        out.append({"item": "nm", "arch": arch, "pattern": nm, "unstructured": unstructured, "nm_float": a[0], "nm_f2": a[1],
                    "un_float": b[0], "un_f2": b[1], "nm_diversity": a[2], "un_diversity": b[2]})
    return out


def _mean(rows: list[dict[str, Any]], item: str, value: Any, **match: Any) -> float:
    """The mean over networks of the per-network mean of ``value(row)`` over the ``item`` rows matching ``match``."""
    per: dict[str, list[float]] = {}
    for r in rows:
        if r["item"] == item and all(r.get(k) == v for k, v in match.items()):
            per.setdefault(r["arch"], []).append(value(r))
    means = [sum(v) / len(v) for v in per.values()]
    return sum(means) / len(means) if means else math.nan


HEADERS = {
    "adaquant": ("### 1. AdaQuant (val accuracy %, fidelity 1 / fidelity 2)",
                 ("network", "policy", "round-to-nearest f1 / f2", "AdaQuant f1 / f2", "layer MSE ratio", "s/eval RTN",
                  "s/eval AdaQuant")),
    "datafree": ("### 2. Data-free calibration (val accuracy %, fidelity 2)",
                 ("network", "policy", "real calibration", "synthetic from BN", "gap")),
    "nm": ("### 3. N:M sparsity (val accuracy %, masked float / W8A8 fidelity 2; log10 mask diversity)",
           ("network", "pattern", "N:M float / W8A8 f2", "unstructured float / W8A8 f2", "N:M minus unstructured (f2)",
            "diversity N:M / unstructured")),
    "psg": ("### 4. PSG (test accuracy % after the fine-tune steps of each row, with and without PSG)",
            ("network", "policy", "seed", "plain", "PSG", "gain", "seconds plain / PSG")),
    "pow2": ("### 5. Power-of-two scales (val accuracy %, fidelity 1 / 2; bitserial latency in us)",
             ("network", "policy", "arbitrary scales", "power-of-two scales", "cost (f2)", "multiplier requant us",
              "shift-only us")),
}


def _line(r: dict[str, Any]) -> tuple[Any, ...]:
    p = _pts
    if r["item"] == "adaquant":
        return (r["arch"], r["policy"], f"{p(r['rtn_f1'])} / {p(r['rtn_f2'])}", f"{p(r['ada_f1'])} / {p(r['ada_f2'])}",
                f"{r['mse_ratio']:.3f}", f"{r['rtn_seconds']:.1f}", f"{r['ada_seconds']:.1f}")
    if r["item"] == "datafree":
        return r["arch"], r["policy"], p(r["real"]), p(r["synthetic"]), p(r["real"] - r["synthetic"])
    if r["item"] == "datafree_synthesis":
        return r["arch"], f"(synthesis + engine build: {r['seconds']:.0f} s, {r['images']} images)", "", "", ""
    if r["item"] == "nm":
        return (r["arch"], f"{r['pattern']} vs {r['unstructured']}", f"{p(r['nm_float'])} / {p(r['nm_f2'])}",
                f"{p(r['un_float'])} / {p(r['un_f2'])}", p(r["nm_f2"] - r["un_f2"]),
                f"{r['nm_diversity']:.0f} / {r['un_diversity']:.0f}")
    if r["item"] == "psg":
        return (r["arch"], r["policy"], r["seed"], p(r["plain"]), p(r["psg"]), p(r["psg"] - r["plain"]),
                f"{r['plain_seconds']:.0f} / {r['psg_seconds']:.0f}")
    return (r["arch"], r["policy"], f"{p(r['arb_f1'])} / {p(r['arb_f2'])}", f"{p(r['p2_f1'])} / {p(r['p2_f2'])}",
            p(r["arb_f2"] - r["p2_f2"]), f"{r['mult_us']:.1f}", f"{r['shift_us']:.1f}")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """The five tables (the items a rows file holds) and the RESULT line, over every row."""
    sections = []
    for item, (title, header) in HEADERS.items():
        mine = [r for r in rows if r["item"] == item or (item == "datafree" and r["item"] == "datafree_synthesis")]
        if mine:
            sections.append(title + "\n\n" + results.md_table(header, [_line(r) for r in mine]))

    def gain(item: str, policy: str, a: str, b: str) -> float:
        return 100 * _mean(rows, item, lambda r: r[a] - r[b], policy=policy)

    r = {
        "adaquant_gain_w3a3": gain("adaquant", "W3A3", "ada_f2", "rtn_f2"),
        "datafree_gap_w4a4": gain("datafree", "W4A4", "real", "synthetic"),
        "nm24_minus_unstructured": 100 * _mean(rows, "nm", lambda r: r["nm_f2"] - r["un_f2"], pattern="2:4"),
        "psg_gain_w2": gain("psg", "W2A4", "psg", "plain"),
        "adaquant_gain_w3a3_f1": gain("adaquant", "W3A3", "ada_f1", "rtn_f1"),
        "adaquant_gain_w2a4": gain("adaquant", "W2A4", "ada_f2", "rtn_f2"),
        "adaquant_seconds_ratio_w3a3": _mean(rows, "adaquant", lambda r: r["ada_seconds"] / r["rtn_seconds"], policy="W3A3"),
        "nm24t_minus_unstructured": 100 * _mean(rows, "nm", lambda r: r["nm_f2"] - r["un_f2"], pattern="2:4-T"),
        "psg_gain_w3": gain("psg", "W3A3", "psg", "plain"),
        "pow2_cost_w8a8": gain("pow2", "W8A8", "arb_f2", "p2_f2"),
        "pow2_cost_w4a4": gain("pow2", "W4A4", "arb_f2", "p2_f2"),
    }
    line = "RESULT " + " ".join(f"{k}={v:.2f}" if not math.isnan(v) else f"{k}=nan" for k, v in r.items())
    return results.Summary(tuple(sections), line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="+", default=["resnet8", "resnet20"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--adaquant-steps", type=int, default=60)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--psg", type=float, default=1.0)
    parser.add_argument("--psg-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--items", nargs="+", default=["adaquant", "datafree", "nm", "psg", "pow2"])
    results.add_arguments(parser, "methods")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    pin_threads(args.threads)
    print(f"load average at start: {_load()}", flush=True)
    problems = {a: Problem.from_task(reference_task(a)) for a in args.archs}
    evs = {a: Evaluator(p, EvalConfig()) for a, p in problems.items()}
    rows: list[dict[str, Any]] = []
    for item, measure in (
        ("adaquant", lambda a: adaquant_rows(a, evs[a], args.adaquant_steps)),
        ("datafree", lambda a: datafree_rows(a, problems[a], evs[a])),
        ("nm", lambda a: nm_rows(a, problems[a], evs[a])),
        ("psg", lambda a: psg_rows(a, evs[a], args.finetune_steps, args.psg, args.psg_seeds)),
        ("pow2", lambda a: pow2_rows(a, problems[a], evs[a])),
    ):
        if item in args.items:
            title, header = HEADERS[item]
            print(f"\n{title}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
            for a in args.archs:
                rows += measure(a)
    print(f"\nload average at end: {_load()}")
    return results.finish(args, rows, "methods", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
