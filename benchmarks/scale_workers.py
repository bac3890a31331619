"""Evaluations per minute of ``automl search --workers W`` for W = 1, 2, 4 (one torch thread each).

Each W runs the same TPE search (same seed, budget ``size<=0.125x``, fidelity 2) on a
reference network in a fresh output directory (so no worker gets another run's cache), as
a real ``python -m automl search`` process. The figure is distinct evaluations divided by
the run's ``search`` stage (``timings.json``). The local workers start before the parent's
set-up stages (float baseline, sensitivities, warm start) and build their evaluators
meanwhile, so for W > 1 the search stage holds only what is left of their start-up; the
whole command's time is printed too, and ``command_speedup_2`` (one worker's whole command
over two workers') says what the user waits for, serial stages included. The rate from the first trial's start to the last trial's completion (read
from the study) is printed too, to tell start-up cost from throughput. The machine's load average is printed with the figures: on a shared
machine the efficiency measures the contention as much as the code.

    python benchmarks/scale_workers.py                       # ResNet-20 (the default task), 120 evaluations
    python benchmarks/scale_workers.py --task reference:resnet8 --evaluations 24 --workers 1,2   # a quick look

The default is the reference task of ``automl search`` at 120 evaluations: with fewer or
cheaper evaluations (ResNet-8 evaluates in ~0.4 s) the workers' start-up (~7 s each: import,
model analysis, evaluator build) dominates the search stage and the figure measures start-up.
Each invocation appends one row (its searches) to ``docs/results/scale_workers.jsonl``;
``--summarise`` writes the page of the saved invocations, whose RESULT line is the latest one's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import results

TITLE = "Scaling with workers: evaluations per minute"


def run(task: str, workers: int, evaluations: int, seed: int, out: Path) -> dict[str, float]:
    """One search; its distinct evaluations, search-stage seconds and whole-command seconds."""
    cmd = [sys.executable, "-m", "automl", "search", "--task", task, "--searcher", "tpe", "--evaluations",
           str(evaluations), "--workers", str(workers), "--threads", "1", "--seed", str(seed), "--output", str(out),
           "--finetune-steps", "0", "--sensitivity", "heuristic"]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"workers={workers} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    (run_dir,) = list((out / "runs").glob("*"))
    timings = json.loads((run_dir / "timings.json").read_text())
    records = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines() if line.strip()]
    distinct = sum(1 for r in records if not r.get("cache_hit"))
    search_s = float(timings["seconds_search"])
    first, last, pids = _trial_span(run_dir)
    return {"steady_per_min": 60.0 * distinct / max(last - first, 1e-9), "n_processes": pids,
            "workers": workers, "evaluations": distinct, "search_s": search_s, "wall_s": wall,
            "evals_per_min": 60.0 * distinct / search_s, "load_start": load, "load_end": os.getloadavg()[0]}


def _trial_span(run_dir: Path) -> tuple[float, float, int]:
    """First trial start, last trial completion (epoch seconds) and evaluating processes, from the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=f"automl-{run_dir.name}", storage=f"sqlite:///{run_dir.resolve() / 'optuna.db'}")
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and not t.user_attrs.get("cache_hit")]
    first = min(t.datetime_start.timestamp() for t in done)
    last = max(t.datetime_complete.timestamp() for t in done)
    return first, last, len({str(t.user_attrs.get("worker")) for t in done})


def figures(row: dict[str, Any]) -> str:
    rows, counts = row["searches"], [r["workers"] for r in row["searches"]]
    by = {r["workers"]: r["evals_per_min"] for r in rows}
    parts = [f"evals_per_min_{w}={by[w]:.3f}" for w in counts]
    if 1 in by and 2 in by:
        parts.append(f"efficiency_2={by[2] / (2 * by[1]):.3f}")
    if 1 in by and 4 in by:
        parts.append(f"efficiency_4={by[4] / (4 * by[1]):.3f}")
    wall = {r["workers"]: r["wall_s"] for r in rows}
    if 1 in wall and 2 in wall:  # the whole command, serial set-up, fine-tune-free finish and all
        parts.append(f"command_speedup_2={wall[1] / wall[2]:.3f}")
    loads = [r["load_start"] for r in rows] + [r["load_end"] for r in rows]
    parts.append(f"load_avg_max={max(loads):.1f} cores={row['cores']}")
    return " ".join(parts)


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every invocation's searches; the RESULT line is the latest invocation's."""
    body = [(*results.when(row), row["task"], r["workers"], r["evaluations"], f"{r['search_s']:.1f}",
             f"{r['evals_per_min']:.2f}", f"{r['steady_per_min']:.2f}", r["n_processes"], f"{r['wall_s']:.1f}",
             f"{r['load_start']:.1f} -> {r['load_end']:.1f} on {row['cores']} cores")
            for row in rows for r in row["searches"]]
    table = results.md_table(("date", "commit", "task", "workers", "evaluations", "search stage s", "per min",
                              "first start to last completion, per min", "processes", "whole command s", "load"), body)
    return results.Summary((table,), "RESULT " + figures(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="reference:resnet20")
    ap.add_argument("--evaluations", type=int, default=120)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--seed", type=int, default=0)
    results.add_arguments(ap, "scale_workers")
    args = ap.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    counts = [int(w) for w in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="scale-workers-") as tmp:
        for w in counts:
            row = run(args.task, w, args.evaluations, args.seed, Path(tmp) / f"w{w}")
            rows.append(row)
            print(f"workers={w}: {row['evaluations']} evaluations, search stage {row['search_s']:.1f} s "
                  f"({row['evals_per_min']:.2f}/min; first trial start to last completion {row['steady_per_min']:.2f}/min "
                  f"in {row['n_processes']} process(es)), whole command {row['wall_s']:.1f} s, "
                  f"load average {row['load_start']:.1f} -> {row['load_end']:.1f} on {os.cpu_count()} cores", flush=True)
    invocation = {"task": args.task, "seed": args.seed, "cores": os.cpu_count(), "searches": rows}
    return results.finish(args, [invocation], "scale_workers", summary, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
