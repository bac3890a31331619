"""Does a longer final fine-tune change the searcher-against-uniform comparison?

The rows of ``benchmarks/search_quality.py`` (ResNet-8, TPE at 150 distinct evaluations and
the fair uniform baseline, the same seeds and the same code, ``search_quality.Job``) with
the final fine-tune at ``--steps`` steps and ``--patience`` (the search's default recipe
otherwise: Adam at 5e-4, cosine, labels plus distillation, keep-best on validation), to set
beside the protocol's rows, which use the default up to 500 steps with patience 3. Ends with
``RESULT tpe_minus_uniform_1_16=<points> tpe_minus_uniform_1_32=<points> max_sd=<points>``
(means over the seeds; ``max_sd`` the largest seed spread of the four rows).

    python benchmarks/finetune_length.py --jobs 2          # 12 rows, appended to docs/results/finetune_length.jsonl
    python benchmarks/finetune_length.py --summarise docs/results/finetune_length_rows.jsonl   # the table, RESULT, page
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
from typing import Any

import results
import search_quality as sq

TITLE = "Final fine-tune length: TPE against the uniform baseline with a longer fine-tune"
BUDGETS = {"1_16": "size<=0.0625x", "1_32": "size<=0.03125x"}


def figures(rows: list[sq.Row]) -> dict[str, float]:
    tests = {(r.budget, r.searcher): [x.test for x in rows if (x.budget, x.searcher) == (r.budget, r.searcher)]
             for r in rows}
    out = {}
    for key, budget in BUDGETS.items():
        tpe, uni = tests.get((budget, "tpe"), []), tests.get((budget, "uniform"), [])
        out[f"tpe_minus_uniform_{key}"] = 100 * (statistics.mean(tpe) - statistics.mean(uni)) if tpe and uni else float("nan")
    out["max_sd"] = max((100 * statistics.stdev(v) for v in tests.values() if len(v) > 1), default=float("nan"))
    return out


def summary(dicts: list[dict[str, Any]]) -> results.Summary:
    names = [f.name for f in dataclasses.fields(sq.Row)]
    rows = [sq.Row(**{k: d[k] for k in names}) for d in dicts]
    table = sq.HEADER.format(f=sq.DEFAULTS.evaluation.fidelity) + "\n" + "\n".join(sq.table(rows))
    return results.Summary((table,), "RESULT " + " ".join(f"{k}={v:.2f}" for k, v in figures(rows).items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500, help="final fine-tune steps (default 1500)")
    ap.add_argument("--patience", type=int, default=0, help="its patience in checks (default 0: every step)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--evaluations", type=int, default=150, help="distinct evaluations per TPE search")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--cache-dir", default=str(sq.default_cache_dir()))
    results.add_arguments(ap, "finetune_length")
    args = ap.parse_args(argv)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summary, __doc__)
    partial = "" if args.no_save else args.out + ".partial"  # each row as it comes, unstamped, in case the run dies
    jobs = [sq.Job("resnet8", b, name, seed, args.evaluations, quick=False, threads=1, cache_dir=args.cache_dir,
                   finetune_steps=args.steps, finetune_patience=args.patience, out=partial)
            for b in BUDGETS.values() for seed in range(args.seeds) for name in ("tpe", "uniform")]
    rows = [dataclasses.asdict(r) for r in sq.run_jobs(jobs, args.jobs)]
    code = results.finish(args, rows, "finetune_length", summary, threads=1)
    if partial and os.path.exists(partial):
        os.remove(partial)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
