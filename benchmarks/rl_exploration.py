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
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from agents.records import TrialRecord
from search_spaces.policy import Policy


def load(run_dir: Path) -> list[TrialRecord]:
    lines = (run_dir / "trials.jsonl").read_text().splitlines()
    return sorted((TrialRecord.from_json(line) for line in lines if line.strip()), key=lambda r: r.number)


def layers_changed(policy: Policy, reference: Policy) -> int:
    ref = reference.as_dict()
    return sum(1 for name, lp in policy.layers if lp != ref[name])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (holding trials.jsonl)")
    args = ap.parse_args()
    print(f"{'run':<40} {'distinct':>8} {'reference':>9} {'best':>7} {'better':>7} {'changed vs ref':>14} "
          f"{'vs best before':>14} {'projected':>9}")
    gains, wins, keys = [], 0, []
    for run in args.runs:
        records = load(run)
        reference, rest = records[0], [r for r in records[1:] if not r.cache_hit]
        best = max((r for r in records if r.feasible), key=lambda r: r.accuracy)
        better = sum(r.accuracy > reference.accuracy for r in rest)
        changed = statistics.median(layers_changed(r.policy, reference.policy) for r in rest) if rest else 0
        local = statistics.median(
            layers_changed(r.policy, max((q for q in records[: r.number] if q.feasible), key=lambda q: q.accuracy).policy)
            for r in rest
        ) if rest else 0
        projected = sum(1 for r in rest if r.repair is not None and any("projection" in s for s in r.repair.steps))
        keys.append({r.policy.key() for r in rest})
        gains.append(100 * (best.accuracy - reference.accuracy))
        wins += best.accuracy > reference.accuracy
        print(f"{str(run)[-40:]:<40} {len({r.policy.key() for r in records}):>8} {reference.accuracy:>9.4f} "
              f"{best.accuracy:>7.4f} {better:>4}/{len(rest):<2} {changed:>14} {local:>14} {projected:>9}")
    if len(keys) > 1:
        shared = set.intersection(*keys)
        print(f"policies every run proposed (after the reference): {len(shared)}")
    print(f"RESULT runs={len(gains)} mean_best_minus_reference={statistics.mean(gains):.2f} wins={wins}")


if __name__ == "__main__":
    main()
