"""Does a longer final fine-tune change the searcher-against-uniform comparison?

The rows of ``benchmarks/search_quality.py`` (ResNet-8, TPE at 150 distinct evaluations and
the fair uniform baseline, the same seeds and the same code, ``search_quality.Job``) with
the final fine-tune at ``--steps`` steps and ``--patience`` (the search's default recipe
otherwise: Adam at 5e-4, cosine, labels plus distillation, keep-best on validation), to set
beside the protocol's rows, which use the default up to 500 steps with patience 3. Ends with
``RESULT tpe_minus_uniform_1_16=<points> tpe_minus_uniform_1_32=<points> max_sd=<points>``
(means over the seeds; ``max_sd`` the largest seed spread of the four rows).

    python benchmarks/finetune_length.py --jobs 2 --out rows.jsonl     # 12 rows, ~22 min at two jobs
    python benchmarks/finetune_length.py --summarise rows.jsonl         # the table and RESULT again
"""

from __future__ import annotations

import argparse
import statistics

import search_quality as sq

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500, help="final fine-tune steps (default 1500)")
    ap.add_argument("--patience", type=int, default=0, help="its patience in checks (default 0: every step)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--evaluations", type=int, default=150, help="distinct evaluations per TPE search")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--cache-dir", default=str(sq.default_cache_dir()))
    ap.add_argument("--out", default="", help="append every row as a JSON line to this file")
    ap.add_argument("--summarise", default="", help="only print the table and RESULT of rows saved by --out")
    args = ap.parse_args()
    if args.summarise:
        rows = sq.load_rows(args.summarise)
    else:
        jobs = [sq.Job("resnet8", b, name, seed, args.evaluations, quick=False, threads=1, cache_dir=args.cache_dir,
                       finetune_steps=args.steps, finetune_patience=args.patience, out=args.out)
                for b in BUDGETS.values() for seed in range(args.seeds) for name in ("tpe", "uniform")]
        rows = sq.run_jobs(jobs, args.jobs)
    print("\n".join(sq.table(rows)))
    print("RESULT " + " ".join(f"{k}={v:.2f}" for k, v in figures(rows).items()))


if __name__ == "__main__":
    main()
