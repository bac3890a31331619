"""What ``automl pareto`` leaves behind: a CSV, a plot, a Markdown table, MLflow artifacts.

- ``pareto.csv``: one row per (budget, method) winner: cost, validation accuracy at the
  search fidelity, test accuracy after the final fine-tune (``finetune_steps`` says how
  many steps; 0 = no fine-tune), and the share of the kept weights at each bit-width.
- ``uniform_points.csv``: every uniform policy evaluated for the curves.
- ``pareto.png``: validation accuracy against cost (our front, the uniform curves, every
  evaluated mixed policy, the budget lines) and the winners' test accuracy per budget.
- ``pareto.md``: the table the command prints, with the 4-bit question answered.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from automl.pareto.points import METHODS, FrontPoint, ParetoResult  # noqa: E402
from automl.problem.budget import format_value  # noqa: E402
from automl.runs.results import AXES  # noqa: E402

if TYPE_CHECKING:
    from automl.runs.runner import Session

COLORS = {"mixed": "tab:red", "uniform": "tab:gray", "uniform+pruning": "black"}
LINE: dict[str, dict[str, Any]] = {"mixed": {"lw": 2.0, "zorder": 4}, "uniform": {"lw": 5.0, "alpha": 0.45, "zorder": 2},
        "uniform+pruning": {"lw": 1.3, "ls": ":", "zorder": 3}}
NAMES = {"mixed": "mixed precision + pruning (ours, best-so-far)", "uniform": "uniform, no pruning",
         "uniform+pruning": "uniform + channel pruning"}


def _bits_in(result: ParetoResult) -> list[int]:
    return sorted({b for p in result.points if p.shares is not None for b in p.shares.shares})


def write_csv(result: ParetoResult, path: Path) -> Path:
    bits = _bits_in(result)
    metric = result.config.metric
    scale, _ = AXES[metric]
    unit = "kB" if metric == "size" else "MBitOps"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["budget", "limit_" + unit, "method", "policy", "cost_" + unit, "cost_rel_float", "val_accuracy",
                    "test_accuracy", "finetune_steps", "mean_bits", *(f"share_w{b}" for b in bits),
                    "pruned_weight_share", "dominant_bits", "found_at"])
        for p in result.points:
            s = p.shares
            w.writerow([p.budget, f"{p.limit / scale:.6g}", p.method, p.label, f"{p.cost / scale:.6g}",
                        f"{p.cost / result.float_cost:.6g}", f"{p.val_accuracy:.6g}", f"{p.test_accuracy:.6g}",
                        p.finetune_steps, f"{s.mean_bits:.4g}" if s else "",
                        *((f"{s.shares.get(b, 0.0):.4g}" if s else "") for b in bits),
                        f"{s.pruned:.4g}" if s else "", s.dominant if s else "", p.found_at])
    return path


def write_uniform_csv(result: ParetoResult, path: Path) -> Path:
    scale, _ = AXES[result.config.metric]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["policy", "weight_bits", "act_bits", "sparsity", "cost", "val_accuracy"])
        for c, acc in result.uniform:
            assert c.costs is not None
            w.writerow([c.label, c.weight_bits, c.act_bits, c.sparsity,
                        f"{c.costs.value(result.config.metric) / scale:.6g}", f"{acc:.6g}"])
    return path


def _staircase(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The upper-left envelope (best accuracy at or below each cost) of ``(cost, accuracy)``."""
    xs, ys, best = [], [], -math.inf
    for x, y in sorted(points):
        if y > best:
            best = y
            xs.append(x)
            ys.append(y)
    return xs, ys


def write_plot(result: ParetoResult, path: Path) -> Path:
    metric = result.config.metric
    scale, label = AXES[metric]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    evaluated = [r for r in result.records if not r.metrics.stopped_early]
    ax.scatter([r.costs.value(metric) / scale for r in evaluated], [r.accuracy for r in evaluated], s=8, alpha=0.25,
               color="tab:red", label="evaluated mixed policies")
    cmap = plt.get_cmap("viridis")
    wbits = sorted({c.weight_bits for c, _ in result.uniform}, reverse=True)
    for i, wb in enumerate(wbits):
        pts = [(c, a) for c, a in result.uniform if c.weight_bits == wb]
        color = cmap(i / max(1, len(wbits) - 1))
        for pruned, marker in ((False, "o"), (True, "x")):
            sel = [(c.costs.value(metric) / scale, a) for c, a in pts if (c.sparsity > 0) == pruned and c.costs]
            if sel:
                ax.scatter(*zip(*sel, strict=True), s=18, marker=marker, color=color, alpha=0.7,
                           label=f"uniform W{wb}" + (" + pruning" if pruned else "") + " (every A bits)")
    for method, pruned in (("uniform", False), ("uniform+pruning", True)):
        sel = [(c.costs.value(metric) / scale, a) for c, a in result.uniform if c.costs and (pruned or c.sparsity == 0)]
        if sel:  # the no-pruning curve is drawn wide underneath: where both coincide, both stay visible
            ax.step(*_staircase(sel), where="post", color=COLORS[method], **LINE[method],
                    label=f"{NAMES[method]}: best at each cost")
    front = [p for p in result.front("mixed") if p.policy is not None]
    ax.plot([p.cost / scale for p in front], [p.val_accuracy for p in front], "-o", color=COLORS["mixed"], lw=2,
            label=NAMES["mixed"])
    for lv in result.levels:
        ax.axvline(lv.limit / scale, color="tab:blue", lw=0.6, alpha=0.5)
    ax.axhline(result.float_val, color="tab:green", lw=0.8, ls="-.", label=f"float model ({result.float_val:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel(f"{label}, log scale; blue lines: the budgets")
    ax.set_ylabel("validation accuracy at the search fidelity")
    ax.set_title(f"accuracy vs {metric}: {len(result.levels)} budgets, {result.config.search.searcher.name}, "
                 f"{result.config.search.run.evaluations} evaluations each")
    ax.legend(fontsize=6.5, loc="upper left")
    steps = result.config.search.finetune.steps
    for method in METHODS:
        won = [p for p in result.front(method) if p.policy is not None]
        bx.plot([p.limit / scale for p in won], [p.test_accuracy for p in won], marker="o", color=COLORS[method],
                label=NAMES[method], **{"ls": "-", **LINE[method]})
    bx.set_xscale("log")
    bx.set_xlabel(f"budget: {label}, log scale")
    bx.set_ylabel("test accuracy" + (f" after a {steps}-step fine-tune" if steps else " (no fine-tune)"))
    bx.set_title("the winner of each budget")
    bx.legend(fontsize=7, loc="upper left")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax, bx):
        axis.xaxis.set_major_formatter(plain)
        axis.xaxis.set_minor_formatter(plain)
        axis.tick_params(axis="x", which="minor", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _row(p: FrontPoint, metric: str, float_cost: float) -> str:
    cost = "n/a" if p.policy is None else f"{format_value(metric, p.cost)} ({p.cost / float_cost:.3g}x)"
    s = p.shares
    return (f"| {p.budget} | {p.method} | {p.label} | {cost} | {p.val_accuracy:.4f} | {p.test_accuracy:.4f} | "
            f"{f'{s.mean_bits:.2f}' if s else 'n/a'} | {s.text() if s else 'n/a'} | {f'{s.pruned:.0%}' if s else 'n/a'} |")


def dominance_lines(result: ParetoResult) -> list[str]:
    """The seed's question, "is the Pareto-optimal policy mostly 4-bit?", answered from the front."""
    front = [p for p in result.front("mixed") if p.shares is not None]
    if not front:
        return ["no mixed policy met any budget of the sweep"]
    four = [p for p in front if p.shares.dominant == 4]  # type: ignore[union-attr]
    majority = [p for p in front if p.shares.shares.get(4, 0.0) > 0.5]  # type: ignore[union-attr]
    lines = [f"4-bit question: 4 bits is the largest share of the kept weights in {len(four)} of {len(front)} front "
             f"points, more than half of them in {len(majority)}; dominant bit-widths along the front (loosest "
             "budget first): " + ", ".join(f"{p.shares.dominant}b" for p in front)]  # type: ignore[union-attr]
    beats = []
    for p in front:
        rivals = [q for q in result.points if q.budget == p.budget and q.method != "mixed" and q.policy is not None]
        if rivals:
            best = max(rivals, key=lambda q: q.val_accuracy)
            beats.append(f"{p.budget}: {p.val_accuracy - best.val_accuracy:+.4f} vs {best.label}")
    if beats:
        lines.append("mixed front minus the best uniform policy (validation): " + "; ".join(beats))
    return lines


def markdown(result: ParetoResult) -> str:
    metric = result.config.metric
    steps = result.config.search.finetune.steps
    test = f"test acc ({steps}-step fine-tune)" if steps else "test acc (no fine-tune)"
    rows = [f"| budget | method | policy | {metric} | val acc | {test} | mean W bits | kept weights per bit-width | pruned |",
            "|---|---|---|---|---|---|---|---|---|"]
    rows += [_row(p, metric, result.float_cost) for p in result.points]
    return "\n".join([*rows, "", *dominance_lines(result)])


def write_report(session: Session, result: ParetoResult, quiet: bool = False) -> dict[str, Path]:
    """Write the files, log them to the MLflow parent run and print the table."""
    d = result.sweep_dir
    files = {
        "csv": write_csv(result, d / "pareto.csv"),
        "uniform_csv": write_uniform_csv(result, d / "uniform_points.csv"),
        "png": write_plot(result, d / "pareto.png"),
    }
    table = markdown(result)
    (d / "pareto.md").write_text(table + "\n")
    files["md"] = d / "pareto.md"
    (d / "sweep.json").write_text(json.dumps({
        "levels": [{"budget": lv.text, "limit": lv.limit, "n_evaluations": lv.result.n_evaluations,
                    "n_cache_hits": lv.result.n_cache_hits, "run_id": lv.run_id} for lv in result.levels],
        "skipped_levels": result.skipped, "uniform_policies": len(result.uniform),
        "sensitivity": {k: v for k, v in result.sensitivity.to_dict().items() if k != "sensitivities"},
    }, indent=1))
    files["json"] = d / "sweep.json"
    result.files = files
    tracker = session.tracker
    if tracker is not None:
        for path in files.values():
            tracker.log_parent_file(path)
        mixed = [p for p in result.front("mixed") if p.policy is not None]
        tracker.log_parent_metrics({
            "n_levels": float(len(result.levels)), "n_uniform_policies": float(len(result.uniform)),
            "n_evaluations": float(sum(lv.result.n_evaluations for lv in result.levels)),
            "sensitivity_evaluations": float(result.sensitivity.evaluations),
            "front_4bit_dominant": float(sum(1 for p in mixed if p.shares and p.shares.dominant == 4)),
            "front_points": float(len(mixed)),
        })
        if result.skipped and tracker.parent_id is not None:
            tracker.client.set_tag(tracker.parent_id, "skipped_levels", "; ".join(result.skipped)[:4000])
    if not quiet:
        print(table)
        print(f"\nfiles: {files['csv']}, {files['png']}, {files['uniform_csv']}", file=sys.stdout)
        sys.stdout.flush()
    return files
