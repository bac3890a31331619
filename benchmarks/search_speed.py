"""Where the wall time of a default search goes, stage by stage.

Runs ``automl search`` with its defaults (``ilp_tpe``, ``size<=0.125x``, fidelity 2, 1 thread) and
the integer-program searcher alone (and, for the model the RESULT line is about, TPE, the
previous default, and the default search once more with the winner's fine-tune beside the search instead of after it:
``finetune_overlap=True``, :mod:`automl.runs.overlap`; ``total_over_no_overlap`` is that run's
time over the run without it), on the reference ResNet-20 and on a LeNet-5-style
4-layer CNN without BatchNorm (trained here for two epochs, so not the project's own
model), each in a fresh output directory and a fresh Python process, as ``automl search``
runs (the first search of a process also pays its one-time costs: data, caches, warm-up;
run in one process, whichever search came first looked ~10 % slower). Reads the run's ``timings.json`` (the same
``seconds_<stage>`` values the MLflow parent run gets) and prints the stages, the share of
wall time spent evaluating, distinct evaluations over proposals, the overhead, and the
default search's time over the ILP-only search's and over TPE's (``total_over_ilp``,
``total_over_tpe``), with the test accuracies (fine-tuned) of all three.

    python benchmarks/search_speed.py               # both models
    python benchmarks/search_speed.py --only resnet20 --evaluations 40

Each invocation appends one row (every search's timings) to ``docs/results/search_speed.jsonl``;
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
import torch
import torch.nn.functional as F

from automl.data import mnist_loaders
from automl.evaluation.task import Task
from automl.reference.models import LeNet4
from automl.runs.config import SearchConfig
from automl.runs.runner import run_search
from automl.timing import pin_threads

TITLE = "Search speed: where the default search's wall time goes"


def lenet_task(seed: int = 0) -> Task:
    """A LeNet-5-style CNN without BatchNorm, trained for two epochs on the MNIST train split."""
    torch.manual_seed(seed)
    loaders = mnist_loaders(batch_size=250, seed=seed)
    model = LeNet4()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(2):
        for x, y in loaders["train"]:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    sample = loaders["val"].dataset[0][0].unsqueeze(0)
    return Task(model, sample, loaders["train"], loaders["calib"], loaders["val"], loaders["test"], name="lenet4")


def one_search(task: Task | None, searcher: str, evaluations: int | None, out: Path, threads: int,
               overlap: bool = SearchConfig().finetune.overlap) -> dict:
    changes = {"run.output": str(out), "searcher.name": searcher, "run.threads": threads, "finetune.overlap": overlap,
               "run.evaluations": evaluations, "task": task.name if task else None}
    config = SearchConfig().merged(changes)  # None values keep the defaults
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    run_search(config, task=task, quiet=True)
    wall = time.perf_counter() - start
    run_dir = next((out / "runs").iterdir())
    timings = json.loads((run_dir / "timings.json").read_text())
    best = json.loads((run_dir / "best_policies.json").read_text())
    first = next(iter(best.values()), {})
    return {"wall": wall, "timings": timings, "test_accuracy": first.get("test_accuracy", float("nan")),
            "val_accuracy": first.get("val_accuracy", float("nan")), "load": (load0, os.getloadavg()[0])}


def report(name: str, searcher: str, r: dict) -> None:
    t = r["timings"]
    stages = {k[len("seconds_"):]: v for k, v in t.items() if k.startswith("seconds_")}
    per_eval = t["eval_seconds"] / max(1, t["n_evaluations"])
    print(f"\n{name} / {searcher}: {r['wall']:.1f} s wall, load average {r['load'][0]:.1f} -> {r['load'][1]:.1f}; "
          f"{t['n_evaluations']} distinct of {t['n_proposed']} proposed, {per_eval:.2f} s per evaluation; "
          f"best val {r['val_accuracy']:.4f}, test (fine-tuned) {r['test_accuracy']:.4f}")
    for k, v in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<14} {v:8.2f} s")
    if "overlap" in t:
        o = t["overlap"]
        print(f"  fine-tune beside the search: {o['started']} started, {o['cancelled']} superseded, winner's "
              f"{'used' if o['hit'] else 'not used'}; {o['overlapped_seconds']:.1f} s of it during the search, "
              f"{o['wait_seconds']:.1f} s waited after; {o['prepare_seconds']:.2f} s preparing them")


def figures(row: dict[str, Any]) -> str:
    """The RESULT figures of one invocation (its searches keyed ``model/searcher/overlap``)."""
    key, dflt, default = row["key"], row["default_searcher"], row["default_overlap"]
    res = row["searches"]

    def get(searcher: str, overlap: bool) -> dict[str, Any]:
        return res[f"{key}/{searcher}/{overlap}"]

    d, ilp, tpe = get(dflt, default), get("ilp", default), get("tpe", default)
    overlapped, serial = get(dflt, True), get(dflt, False)
    t = d["timings"]
    total = t["seconds_total"]
    return (f"total_s_{key}={total:.1f} eval_share={t['eval_seconds'] / total:.3f} "
            f"distinct_share={t['n_evaluations'] / max(1, t['n_proposed']):.3f} overhead_s={total - t['eval_seconds']:.1f} "
            f"total_over_ilp={total / ilp['timings']['seconds_total']:.2f} "
            f"total_over_no_overlap={overlapped['timings']['seconds_total'] / serial['timings']['seconds_total']:.2f} "
            f"total_over_tpe={total / tpe['timings']['seconds_total']:.2f} test_default={d['test_accuracy']:.4f} "
            f"test_tpe={tpe['test_accuracy']:.4f} test_ilp={ilp['test_accuracy']:.4f}")


def summary(rows: list[dict[str, Any]]) -> results.Summary:
    """Every invocation's searches with their largest stages; the RESULT line is the latest invocation's."""
    body = []
    for row in rows:
        for label, r in row["searches"].items():
            t = r["timings"]
            stages = sorted(((k[len("seconds_"):], v) for k, v in t.items()
                             if k.startswith("seconds_") and k != "seconds_total"), key=lambda kv: -kv[1])
            body.append((*results.when(row), label, f"{t['seconds_total']:.1f}", f"{t['eval_seconds']:.1f}",
                         f"{t['n_evaluations']}/{t['n_proposed']}", f"{r['test_accuracy']:.4f}",
                         ", ".join(f"{k} {v:.1f}" for k, v in stages[:4])))
    table = results.md_table(("date", "commit", "model/searcher/overlap", "total s", "evaluating s",
                              "distinct/proposed", "test (fine-tuned)", "largest stages s"), body)
    return results.Summary((table,), "RESULT " + figures(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--evaluations", type=int, default=None, help="override the default count (for a quick look)")
    parser.add_argument("--only", choices=("resnet20", "lenet4"), default=None)
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "SEARCHER", "OVERLAP", "OUT"), help=argparse.SUPPRESS)
    results.add_arguments(parser, "search_speed")
    args = parser.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    pin_threads(args.threads)
    if args.child:  # one search in this process; the parent reads its result
        name, searcher, overlap, out = args.child
        task = lenet_task() if name == "lenet4" else None
        r = one_search(task, searcher, args.evaluations, Path(out), args.threads, overlap == "True")
        (Path(out) / "search_speed.json").write_text(json.dumps(r))
        return 0
    done: dict[tuple[str, str, bool], dict] = {}  # (model, searcher, fine-tune beside the search)
    with tempfile.TemporaryDirectory(prefix="search-speed-") as tmp:
        for name in ("resnet20", "lenet4"):
            if args.only and name != args.only:
                continue
            default, dflt = SearchConfig().finetune.overlap, SearchConfig().searcher.name
            runs = [(dflt, default), ("ilp", default)]
            if name == (args.only or "resnet20"):  # the previous default, and the other fine-tune placement
                runs += [("tpe", default)] if dflt != "tpe" else []
                runs.append((dflt, not default))
            for searcher, overlap in runs:
                tag = searcher + ("" if overlap == default else " (overlap)" if overlap else " (no overlap)")
                out = Path(tmp) / f"{name}-{searcher}-{overlap}"
                child = [sys.executable, __file__, "--child", name, searcher, str(overlap), str(out), "--threads",
                         str(args.threads)] + (["--evaluations", str(args.evaluations)] if args.evaluations else [])
                subprocess.run(child, check=True)
                r = json.loads((out / "search_speed.json").read_text())
                done[(name, searcher, overlap)] = r
                report(name, tag, r)
    key = "resnet20" if not args.only else args.only
    default, dflt = SearchConfig().finetune.overlap, SearchConfig().searcher.name
    d, ilp = done[(key, dflt, default)], done[(key, "ilp", default)]
    tpe = done[(key, "tpe", default)]
    overlapped, serial = done[(key, dflt, True)], done[(key, dflt, False)]
    print(f"\nILP-only test accuracy {ilp['test_accuracy']:.4f}, TPE {tpe['test_accuracy']:.4f} "
          f"({tpe['timings']['seconds_total']:.1f} s) vs default {d['test_accuracy']:.4f} "
          f"(total_over_ilp compares wall times at these accuracies); with the fine-tune beside the search "
          f"{overlapped['timings']['seconds_total']:.1f} s, test {overlapped['test_accuracy']:.4f}; after it "
          f"{serial['timings']['seconds_total']:.1f} s, test {serial['test_accuracy']:.4f}")
    row = {"key": key, "default_searcher": dflt, "default_overlap": default, "evaluations": args.evaluations,
           "searches": {f"{m}/{s}/{o}": r for (m, s, o), r in done.items()}}
    return results.finish(args, [row], "search_speed", summary, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
