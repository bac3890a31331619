"""Results pages for the rows of ``benchmarks/search_quality.py`` (until its own ``--summarise`` writes them).

``search_quality.py --summarise`` prints the protocol's table and RESULT line, but takes the
ResNet-20 float test accuracy from an evaluator it builds (torch work). This renders the same
table and RESULT line from a rows file with the float test accuracy that the shipped reference
network's manifest records (``automl/reference/weights/manifest.json``), and writes the page.
There is no ground truth among saved rows, so ``regret_tiny`` is ``nan``.

    python benchmarks/search_quality_pages.py --summarise docs/results/search_quality_full_rows.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import results
import search_quality as sq

TITLE = "Searcher comparison (search_quality.py)"
MANIFEST = results.REPO / "automl" / "reference" / "weights" / "manifest.json"


def float_test(arch: str = "resnet20") -> float:
    """The shipped reference network's float test accuracy, as its manifest records it."""
    return float(json.loads(MANIFEST.read_text())[f"{arch}-seed0.pt"]["test_accuracy"])


def summary(dicts: list[dict[str, Any]]) -> results.Summary:
    names = [f.name for f in dataclasses.fields(sq.Row)]
    rows = [sq.Row(**{k: d[k] for k in names}) for d in dicts]
    table = sq.HEADER.format(f=sq.DEFAULTS.evaluation.fidelity) + "\n" + "\n".join(sq.table(rows))
    note = (f"Test accuracy in % after the same fine-tune, mean +- sd over the seeds of each line; the RESULT line's "
            f"`ft_gap` figures use the ResNet-20 float test accuracy of the shipped manifest, "
            f"{100 * float_test():.2f} %; no ground truth is among saved rows (`regret_tiny=nan`).")
    return results.Summary((table,), sq.summary(rows, [], float_test()), (note,))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--summarise", nargs="+", metavar="ROWS", required=True, help="search_quality.py rows files")
    ap.add_argument("--page", default=None, help="where to write the page (default docs/results/<stem>.md)")
    args = ap.parse_args(argv)
    return results.summarise_main(args, __file__, TITLE, summary, sq.__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
