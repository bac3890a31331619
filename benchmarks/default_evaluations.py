"""How many evaluations the default search needs: the default searcher at a smaller count against its saved rows.

Runs ``benchmarks/search_quality.py``'s own jobs for the default searcher at ``--evaluations``
distinct evaluations (sensitivity stage included, the same fine-tune, seeds 0-2) on the
ResNet-20 headline budgets (1/8, 1/16, 1/32) and the ResNet-8 ranking budgets 1/16 and 1/32,
and compares them with the protocol's rows of the same searcher (ResNet-20 at 60, ResNet-8 at
150 evaluations, ``--reference``). Ends with the mean fine-tuned test accuracy of each side per
network (points) and the ratio of their mean wall seconds.

    python benchmarks/default_evaluations.py --evaluations 20 --jobs 2     # appends to docs/results/default_evaluations.jsonl
    python benchmarks/default_evaluations.py --summarise docs/results/search_quality_default_evaluations_rows.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
from typing import Any

import results
import search_quality as sq

TITLE = "Default evaluations: the default searcher at fewer evaluations"
REFERENCE = str(results.RESULTS_DIR / "search_quality_full_rows.jsonl")


def as_rows(dicts: list[dict[str, Any]]) -> list[sq.Row]:
    """``search_quality.Row``s from saved rows (their stamp left out)."""
    names = [f.name for f in dataclasses.fields(sq.Row)]
    return [sq.Row(**{k: d[k] for k in names}) for d in dicts]


def compare(rows: list[sq.Row], reference: list[sq.Row], searcher: str) -> tuple[list[str], str]:
    def pick(rs: list[sq.Row], arch: str, budgets: tuple[str, ...]) -> list[sq.Row]:
        return [r for r in rs if r.arch == arch and r.searcher == searcher and r.budget in budgets]

    parts, ratios, notes = [], [], []
    for arch, budgets in (("resnet20", sq.HEADLINE_BUDGETS), ("resnet8", sq.RANK_BUDGETS[:2])):
        mine, ref = pick(rows, arch, budgets), pick(reference, arch, budgets)
        n_mine = mine[0].distinct if mine else 0
        n_ref = ref[0].distinct if ref else 0
        parts.append(f"{arch}_test_e{n_mine}={100 * statistics.mean(r.test for r in mine):.2f} "
                     f"{arch}_test_ref={100 * statistics.mean(r.test for r in ref):.2f}" if mine and ref else "")
        if mine and ref:
            ratios.append(statistics.mean(r.seconds for r in mine) / statistics.mean(r.seconds for r in ref))
            notes.append(f"{arch}: {len(mine)} rows at {n_mine} evaluations, {len(ref)} reference rows at {n_ref}")
    ratio = statistics.mean(ratios) if ratios else float("nan")
    return notes, "RESULT " + " ".join(p for p in parts if p) + f" seconds_over_ref={ratio:.2f}"


def summary(dicts: list[dict[str, Any]], reference: str = REFERENCE, searcher: str = sq.DEFAULTS.searcher.name) -> results.Summary:
    rows = as_rows(dicts)
    notes, line = compare(rows, as_rows(results.load_rows(reference)), searcher)
    table = sq.HEADER.format(f=sq.DEFAULTS.evaluation.fidelity) + "\n" + "\n".join(sq.table(rows))
    return results.Summary((table,), line, (f"Against the reference rows `{os.path.basename(reference)}`: "
                                            + "; ".join(notes) + ".",))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--evaluations", type=int, default=sq.DEFAULTS.run.evaluations)
    ap.add_argument("--searcher", default=sq.DEFAULTS.searcher.name)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--finetune-steps", type=int, default=sq.DEFAULTS.finetune.steps,
                    help="the final fine-tune's steps (lower only to smoke-test the script)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference", default=REFERENCE,
                    help="the protocol's saved rows (the same searcher at its own counts)")
    results.add_arguments(ap, "default_evaluations")
    args = ap.parse_args(argv)
    summarise = functools.partial(summary, reference=args.reference, searcher=args.searcher)
    if args.summarise:
        return results.summarise_main(args, __file__, TITLE, summarise, __doc__)
    cache = str(sq.default_cache_dir())
    for arch in ("resnet20", "resnet8"):
        sq.setup(arch, False, args.threads, cache)  # the stage's tables, cached before the workers start
    partial = "" if args.no_save else args.out + ".partial"  # each row as it comes, unstamped, in case the run dies
    jobs = [sq.Job(arch, b, args.searcher, seed, args.evaluations, False, args.threads, cache,
                   args.finetune_steps, out=partial)
            for seed in range(args.seeds)
            for arch, budgets in (("resnet20", sq.HEADLINE_BUDGETS), ("resnet8", sq.RANK_BUDGETS[:2]))
            for b in budgets]
    rows = [dataclasses.asdict(r) for r in sq.run_jobs(jobs, args.jobs)]
    code = results.finish(args, rows, "default_evaluations", summarise, threads=args.threads)
    if partial and os.path.exists(partial):
        os.remove(partial)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
