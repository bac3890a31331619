"""Where an RL search explored: its trials against its reference policy, from run directories.

Reads the ``trials.jsonl`` of ``automl search`` runs of an RL searcher whose first trial is
its reference (the warm start replays the integer program's policy first) and prints per
run: distinct policies, how many trials beat the reference, how far the explored policies
are from it and from the best policy found before them (free layers whose policy
differs: the distance of an episode from the search's centre), how many episodes the env projected
(recorded as a repair with ``projection`` steps) and the best trial. With two or more runs
it also counts the policies the runs share (different seeds should share only the
warm-start policies).

    for s in 0 1 2; do automl search --task reference:resnet8 --searcher maskable_ppo \\
        --budget 'size<=0.0625x' --evaluations 60 --finetune-steps 0 --threads 1 --seed $s --output runs$s; done
    python benchmarks/rl_exploration.py runs0/runs/* runs1/runs/* runs2/runs/*

Ends ``RESULT runs=<n> mean_best_minus_reference=<points> wins=<runs whose best beats the reference>``.
Each invocation appends one row (its runs) to ``docs/results/rl_exploration.jsonl``; ``--summarise``
writes the page of the saved invocations, whose RESULT line is the latest one's.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
from pathlib import Path
from typing import Any

import results

from agents.records import TrialRecord
from search_spaces.policy import Policy

TITLE = "RL exploration: where an RL search explored around its reference"


def load(run_dir: Path) -> list[TrialRecord]:
    lines = (run_dir / "trials.jsonl").read_text().splitlines()
    return sorted((TrialRecord.from_json(line) for line in lines if line.strip()), key=lambda r: r.number)


def layers_changed(policy: Policy, reference: Policy) -> int:
    ref = reference.as_dict()
    return sum(1 for name, lp in policy.layers if lp != ref[name])


def describe_run(run: Path) -> dict[str, Any]:
    records = load(run)
    reference, rest = records[0], [r for r in records[1:] if not r.cache_hit]
    best = max((r for r in records if r.feasible), key=lambda r: r.accuracy)
    changed = statistics.median(layers_changed(r.policy, reference.policy) for r in rest) if rest else 0
    local = statistics.median(
        layers_changed(r.policy, max((q for q in records[: r.number] if q.feasible), key=lambda q: q.accuracy).policy)
        for r in rest
    ) if rest else 0
    return {
        "run": str(run), "distinct": len({r.policy.key() for r in records}), "reference": reference.accuracy,
        "best": best.accuracy, "better": sum(r.accuracy > reference.accuracy for r in rest), "explored": len(rest),
        "changed_vs_reference": changed, "changed_vs_best_before": local,
        "projected": sum(1 for r in rest if r.repair is not None and any("projection" in s for s in r.repair.steps)),
        # digests, not the policies: enough to count what the runs share
        "proposed": sorted({hashlib.sha1(r.policy.key().encode()).hexdigest()[:16] for r in rest}),
    }


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every invocation's runs; the RESULT line is the latest invocation's."""
    body = [(*results.when(row), r["run"][-40:], r["distinct"], f"{r['reference']:.4f}", f"{r['best']:.4f}",
             f"{r['better']}/{r['explored']}", r["changed_vs_reference"], r["changed_vs_best_before"], r["projected"])
            for row in rows for r in row["runs"]]
    table = results.md_table(("date", "commit", "run", "distinct", "reference", "best", "better", "changed vs ref",
                              "vs best before", "projected"), body)
    runs = rows[-1]["runs"]
    notes = []
    if len(runs) > 1:
        shared = set.intersection(*(set(r["proposed"]) for r in runs))
        notes.append(f"policies every run proposed (after the reference): {len(shared)}")
    gains = [100 * (r["best"] - r["reference"]) for r in runs]
    wins = sum(r["best"] > r["reference"] for r in runs)
    return results.Summary((table,), f"RESULT runs={len(gains)} mean_best_minus_reference={statistics.mean(gains):.2f} "
                           f"wins={wins}", tuple(notes))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path, help="run directories (holding trials.jsonl)")
    results.add_arguments(ap, "rl_exploration")
    args = ap.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    if not args.runs:
        ap.error("give the run directories of RL searches (or --summarise ROWS)")
    return results.finish(args, [{"runs": [describe_run(run) for run in args.runs]}], "rl_exploration", summary)


if __name__ == "__main__":
    raise SystemExit(main())
