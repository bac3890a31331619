"""What a finished search leaves behind: best policies, Pareto front, charts, a summary.

Written to the run directory and to the MLflow parent run; the best policy of the budget
(and of each single constraint) is fine-tuned and scored once on the test split.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agents.baselines import uniform_set  # noqa: E402
from agents.records import SearchResult, TrialRecord  # noqa: E402
from automl.cost.units import SIZE_UNIT, cost_metrics, kb, limit_metrics  # noqa: E402
from automl.evaluation.finalists import Finalist, screen  # noqa: E402
from automl.evaluation.finetune import FinetuneConfig  # noqa: E402
from automl.export.ampq import ExportReport, export_policy  # noqa: E402
from automl.export.onnx import export_run_onnx  # noqa: E402
from automl.problem.budget import format_value  # noqa: E402
from automl.runs.console import closing_lines, stage  # noqa: E402
from automl.runs.export_notes import with_notes  # noqa: E402
from automl.runs.overlap import SpeculativeFinetune, overlap_line  # noqa: E402
from automl.tracking.layer_report import html_table, layer_figure, layer_params, layer_rows, markdown_table  # noqa: E402
from automl.tracking.ui import child_note, limits_text, parent_note  # noqa: E402

if TYPE_CHECKING:
    from automl.runs.runner import Session


# The .ampq file's torch latency is a side figure (the ONNX model is what deploys and has its
# own timing): a small batch and a few rounds keep it to about a second.
EXPORT_TIMING_BATCH = 32
EXPORT_TIMING_REPEATS = 7

def search_line(result: SearchResult, earlier: Collection[int] = ()) -> str:
    """One line on what the search spent: distinct evaluations, cache hits, early stops, seconds.

    ``earlier``: the trial numbers of the sessions before a resume. The wall time is this
    session's, so a resumed search counts the evaluating seconds of this session beside it and
    those of every session apart."""
    line = (f"{result.n_evaluations} distinct evaluations ({result.n_cache_hits} cache hits, "
            f"{result.n_stopped_early} stopped early)")
    new = [r for r in result.records if r.number not in earlier and not r.cache_hit]
    if earlier:
        line += (f"; this session: {len(new)} in {result.wall_seconds:.0f} s, {sum(r.metrics.seconds for r in new):.0f} s "
                 f"of them evaluating; all sessions: {result.eval_seconds:.0f} s evaluating")
    else:
        line += f" in {result.wall_seconds:.0f} s, {result.eval_seconds:.0f} s of them evaluating"
    return line + (f"; stopped: {result.stop_reason}" if result.stop_reason else "")


def model_tested(report: Any, steps: int) -> str:
    """Which model a test accuracy is of: the fine-tuned one, or the searched policy as it was
    (no fine-tune asked, or none of its checkpoints validated better than step 0)."""
    if report is None or steps == 0 or report.steps == 0:
        return "not fine-tuned: --finetune-steps 0"
    if report.best_step == 0:
        return f"not fine-tuned: no step of {report.steps} beat the searched policy on validation"
    return f"fine-tuned, step {report.best_step} of {report.steps}"


def best_per_budget(session: Session, result: SearchResult) -> dict[str, TrialRecord]:
    """Label -> best feasible record: the whole budget, then each constraint alone."""
    out: dict[str, TrialRecord] = {}
    if result.best is not None:
        out["budget: " + ", ".join(result.budget)] = result.best
    limits = dict(session.bound.limits)
    if len(limits) > 1:
        for metric, limit in limits.items():  # several constraints on one metric merge into one limit
            rec = result.best_for({metric: limit})
            if rec is not None:
                out[f"{metric}<={format_value(metric.split('@')[0], limit)}"] = rec
    return out


def summary_table(result: SearchResult, best: dict[str, TrialRecord], test: dict[str, float],
                  tested: dict[str, str] | None = None) -> str:
    tested = tested or {}
    rows = [
        f"| best for | trial | val accuracy | test accuracy | tested model | size {SIZE_UNIT} | MBitOps | mean bits | sparsity | "
        "repaired |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in best.items():
        rows.append(
            f"| {label} | {r.number} | {r.accuracy:.4f} | {test.get(label, float('nan')):.4f} | {tested.get(label, '?')} | "
            f"{kb(r.costs.size_bytes):.2f} | {r.costs.bitops / 1e6:.4g} | "
            f"{r.policy.mean_weight_bits():.2f} | {r.policy.channel_sparsity():.1%} | {r.repaired} |"
        )
    return "\n".join(rows)


AXES = {  # metric -> (divisor, axis label): the units of automl.cost.units
    "size": (1000.0, f"model size ({SIZE_UNIT}, 1 {SIZE_UNIT} = 1000 B)"),
    "peak_act": (1000.0, f"peak activation memory ({SIZE_UNIT})"),
    "bitops": (1e6, "BitOps (millions)"),
    "macs": (1e6, "MACs (millions)"),
    "latency": (1.0, "latency (ms)"),
}


def pareto_artifacts(session: Session, result: SearchResult) -> list:
    run_dir = session.run_dir
    paths = []
    metrics = [m for m, _ in session.bound.limits] or ["size"]
    front = result.pareto_front(metrics[:1])
    csv_path = run_dir / "pareto_front.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["trial", "accuracy", "size_bytes", "bitops", "macs", "feasible", "mean_bits", "sparsity"])
        for r in front:
            w.writerow([r.number, r.accuracy, r.costs.size_bytes, r.costs.bitops, r.costs.macs, r.feasible,
                        round(r.policy.mean_weight_bits(), 4), round(r.policy.channel_sparsity(), 4)])
    paths.append(csv_path)
    metric = metrics[0]
    scale, axis_label = AXES.get(metric.split("@")[0], (1.0, metric))
    if metric.startswith("latency@"):
        axis_label = f"latency on {metric.split('@', 1)[1]} (ms)"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r.cost(metric) / scale for r in result.records]
    ax.scatter(xs, [r.accuracy for r in result.records], s=12, alpha=0.4,
               c=["tab:blue" if r.feasible else "tab:gray" for r in result.records], label="evaluated policies (gray: over budget)")
    fx = [r.cost(metric) / scale for r in front]
    ax.step(fx, [r.accuracy for r in front], where="post", color="tab:red", label="Pareto front")
    limit = dict(session.bound.limits).get(metric)
    if limit is not None:
        ax.axvline(limit / scale, color="k", ls="--", lw=1, label=f"budget {metric} <= {format_value(metric.split('@')[0], limit)}")
    ax.set_xlabel(axis_label)
    ax.set_ylabel("validation accuracy (task metric)")
    ax.set_title(f"{result.searcher}: {result.n_evaluations} policies")
    ax.legend(loc="lower right")
    fig.tight_layout()
    png = run_dir / "pareto_front.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    paths.append(png)
    return paths


def layer_chart(session: Session, best: dict[str, TrialRecord]):
    names = session.problem.space.names
    fig, axes = plt.subplots(2, 1, figsize=(max(7, len(names) * 0.4), 6), sharex=True)
    width = 0.8 / max(1, len(best))
    for i, (label, r) in enumerate(best.items()):
        pos = [j + i * width for j in range(len(names))]
        axes[0].bar(pos, [lp.mean_bits for _, lp in r.policy], width, label=label)
        axes[1].bar(pos, [lp.sparsity for _, lp in r.policy], width, label=label)
    axes[0].set_ylabel("mean weight bits (kept)")
    axes[1].set_ylabel("pruned fraction")
    axes[1].set_xticks(range(len(names)), names, rotation=75, fontsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    png = session.run_dir / "best_policies_layers.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def deployment_table(onnx_report: dict[str, Any], export: ExportReport, float_test: float, test: float) -> str:
    """Float against the exported winner, side by side: ONNX Runtime latency at batch 1 and at the
    timed batch, file sizes and test accuracy (the winner's after its final fine-tune)."""
    r = onnx_report

    def ratio(f: float, e: float) -> str:
        return f"{f / e:.2f}x faster" if e <= f else f"{e / f:.2f}x SLOWER"

    rows = [
        "| deployment | float | exported winner | |",
        "|---|---|---|---|",
        f"| ONNX Runtime ms, batch 1 ({r['threads']} thread(s)) | {r['float_latency_b1_ms']:.3f} | "
        f"{r['latency_b1_ms']:.3f} | {ratio(r['float_latency_b1_ms'], r['latency_b1_ms'])} |",
        f"| ONNX Runtime ms, batch {r['batch']} | {r['float_latency_batch_ms']:.2f} | {r['latency_batch_ms']:.2f} | "
        f"{ratio(r['float_latency_batch_ms'], r['latency_batch_ms'])} |",
        f"| ONNX file {SIZE_UNIT} | {kb(r['float_onnx_bytes']):.1f} | {kb(r['onnx_bytes']):.1f} | "
        f"{r['float_onnx_bytes'] / max(1, r['onnx_bytes']):.2f}x smaller |",
        f"| packed file {SIZE_UNIT} (float checkpoint / .ampq) | {kb(export.float_file_bytes):.1f} | "
        f"{kb(export.file_bytes):.1f} | {export.float_file_bytes / max(1, export.file_bytes):.2f}x smaller |",
        f"| test accuracy | {float_test:.4f} | {test:.4f} | {100 * (test - float_test):+.2f} points |",
        f"files: {r['onnx_path']} and the float network as {r.get('float_onnx_path', '(not written)')}",
    ]
    return "\n".join(rows)


def slower_reason(onnx_report: dict[str, Any], limits: dict[str, float]) -> str:
    """Why the exported file is slower than float, when it is; empty when it is not."""
    slower = [f"batch {b}" for b, key in ((1, "speedup_b1"), (onnx_report["batch"], "speedup_batch"))
              if onnx_report[key] < 1.0]
    if not slower:
        return ""
    latency = [m for m in limits if m.startswith("latency@")]
    if latency:
        return (f"note: the exported file is slower than float at {' and '.join(slower)} although the budget holds "
                f"{', '.join(latency)}: the profile priced a different batch or machine load; re-measure the profile "
                "(automl profile-hardware) on the deployment machine.")
    return (f"note: the exported file is slower than float at {' and '.join(slower)}: the budget ({', '.join(limits)}) "
            "limits size or operations only, and on a CPU without fast low-bit kernels (x86 without VNNI) the "
            "quantize/dequantize steps cost more time than the smaller layers save; only pruned channels make it "
            "faster. Add a latency budget priced on this runtime, for example --budget 'latency<=0.8x@ort-cpu', "
            "to get a file that is both smaller and faster.")


def _publish_child(session: Session, label: str, record: TrialRecord, run_id: str, test: float | None, tested: str) -> None:
    """A best child run: its test accuracy, a per-layer table (parameters, note, artifacts) and figure."""
    tracker = session.tracker
    assert tracker is not None
    rows = layer_rows(session.cost_model, record.policy)
    folder = session.run_dir / "best" / f"trial-{record.number:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    title = f"trial {record.number}, best for {label}"
    table = markdown_table(rows)
    (folder / "layers.md").write_text(table + "\n")
    (folder / "layers.html").write_text(html_table(rows, title))
    (folder / "layers.json").write_text(json.dumps([r.to_dict() for r in rows], indent=1))
    layer_figure(rows, folder / "layers.png", title)
    for name in ("layers.md", "layers.html", "layers.json", "layers.png"):
        tracker.log_run_file(run_id, folder / name)
    tracker.log_params(run_id, layer_params(rows))  # shown in full on the run's page, unlike a long description
    if test is not None:
        tracker.log_run_metrics(run_id, {"test_accuracy": test})
    tracker.set_note(run_id, child_note(record, label, test, table, dict(session.bound.limits), tested))


def ranking(result: SearchResult, best: dict[str, TrialRecord]) -> list[int]:
    """Trial numbers best first: the policy the search returns and the other best-for rows, then
    the feasible policies (accuracy, then smaller size), then the infeasible ones (accuracy)."""
    order = list(dict.fromkeys(r.number for r in best.values()))
    rest = sorted((r for r in result.records if r.number not in order and not r.cache_hit),
                  key=lambda r: (not r.feasible, -r.accuracy if r.accuracy == r.accuracy else float("inf"),
                                 r.costs.size_bytes, r.number))
    return order + list(dict.fromkeys(r.number for r in rest))


def publish(session: Session, result: SearchResult, best: dict[str, TrialRecord], test: dict[str, float],
            export: ExportReport | None, artifacts: list, extra_metrics: dict[str, float] | None = None,
            tested: dict[str, str] | None = None) -> None:
    """Log the results to MLflow: parent artifacts, metrics and description; the best children;
    every child's ``rank`` and the search's view ordered by it.

    ``extra_metrics`` (the sensitivity stage, the fine-tune, the ONNX export) go to the parent too."""
    tracker = session.tracker
    assert tracker is not None
    tested = tested or {}
    tracker.flush()
    for path in artifacts:
        tracker.log_parent_file(path)
    runs = tracker.logged_trials()
    labels: dict[int, list[str]] = {}  # one trial can be best for several labels
    for label, r in best.items():
        labels.setdefault(r.number, []).append(label)
    winners = {r.number: (r, test.get(label), tested.get(label, "fine-tuned")) for label, r in reversed(best.items())}
    tracker.tag_best({"; ".join(labels[n]): runs[n] for n in labels if n in runs})
    for n, (r, test_accuracy, how) in winners.items():
        if n in runs:
            _publish_child(session, "; ".join(labels[n]), r, runs[n], test_accuracy, how)
    tracker.log_ranks({runs[n]: i for i, n in enumerate((n for n in ranking(result, best) if n in runs), start=1)})
    tracker.set_view([name for name, _ in session.cost_model.float_costs().latency_ms])
    metrics = {"n_evaluations": float(result.n_evaluations), "wall_seconds": result.wall_seconds,
               "mlflow_log_seconds": tracker.log_seconds, **limit_metrics(session.bound.limits)}
    first = next(iter(best.values()), None)
    if first is not None:
        metrics.update({"best_val_accuracy": first.accuracy, "best_test_accuracy": next(iter(test.values())),
                        **cost_metrics(first.costs, "best_")})
    if export is not None:
        metrics.update({"export_file_kB": kb(export.file_bytes), "export_predicted_kB": kb(export.predicted_bytes or 0),
                        "export_latency_ms": export.latency_exported_ms, "float_latency_ms": export.latency_float_ms})
    metrics.update(extra_metrics or {})
    tracker.log_parent_metrics(metrics)
    ev = session.evaluator.evaluator
    base = ev.baseline("val").accuracy
    note = parent_note(
        tracker.experiment_id, result.searcher, result.n_evaluations, dict(session.bound.limits),
        {label: (r, runs.get(r.number), test.get(label), tested.get(label, "fine-tuned")) for label, r in best.items()},
        base, session.cost_model.float_costs().size_bytes, parent_id=tracker.parent_id,
    )
    assert tracker.parent_id is not None
    tracker.set_note(tracker.parent_id, note)


def pick_finalist(session: Session, result: SearchResult, best: dict[str, TrialRecord], recipe: FinetuneConfig,
                  quiet: bool) -> list[Finalist]:
    """With ``finetune.finalists > 1``, replace the budget's winner in ``best`` by the best of
    the finalists after their short fine-tunes (:mod:`automl.evaluation.finalists`); returns their report."""
    k, steps = session.config.finetune.finalists, session.config.finetune.finalist_steps
    if not best or k <= 1:
        return []
    label = next(iter(best))
    with stage(f"finalists: a {steps}-step fine-tune of each of the {k} best policies, the best on validation wins",
               quiet), session.timer.stage("finalists"):
        winner, finalists = screen(session.evaluator.evaluator, result.records, k, steps, recipe,
                                   uniform_set(session.problem.space))
    if winner is not None:
        best[label] = winner
    if finalists and not quiet:
        print("finalists (trial: search score -> validation after the short fine-tune): " + ", ".join(
            f"{f.trial}{' (uniform)' if f.uniform else ''}: {f.score:.4f} -> {f.val_after:.4f}" for f in finalists) + f"; winner trial {best[label].number}")
    return finalists


def _parent_extras(result: SearchResult, best: dict[str, TrialRecord], tuned: dict[str, Any], finalists: list[Finalist],
                   onnx_report: dict, speculation: SpeculativeFinetune | None) -> dict[str, float]:
    """The parent run's metrics beyond the winner's costs: counts, fine-tune, overlap, finalists, ONNX."""
    extra = {"sensitivity_evaluations": float(result.sensitivity_evaluations), "n_proposed": float(result.n_proposed),
             "n_cache_hits": float(result.n_cache_hits), "n_stopped_early": float(result.n_stopped_early),
             "eval_seconds": result.eval_seconds}
    if tuned:
        ft = next(iter(tuned.values()))
        extra.update({"finetune_val_before": ft.before.accuracy, "finetune_val_after": ft.after.accuracy,
                      "finetune_best_step": float(ft.best_step), "finetune_seconds": ft.seconds})
    if speculation is not None:
        rep = speculation.report
        extra.update({"finetune_speculations": float(rep.started), "finetune_overlap_hit": float(rep.hit),
                      "finetune_overlap_seconds": rep.overlapped_seconds, "finetune_background_seconds": rep.background_seconds,
                      "finetune_wait_seconds": rep.wait_seconds})
    if finalists:
        extra.update({"finalists_screened": float(len(finalists)),
                      "finalist_winner_trial": float(next(iter(best.values())).number)})
    if onnx_report and "error" not in onnx_report:
        extra.update({"onnx_speedup_b1": onnx_report["speedup_b1"], "onnx_speedup_batch": onnx_report["speedup_batch"]})
    return extra


def _final(ev: Any, r: TrialRecord, steps: int, recipe: FinetuneConfig,
           speculation: SpeculativeFinetune | None) -> tuple[Any, Any]:
    """``ev.final`` of the winner, or the same result from its speculative fine-tune (automl.runs.overlap)."""
    start = time.perf_counter()
    ready = speculation.take(r.policy) if speculation is not None else None
    if ready is None:
        return ev.final(r.policy, steps, "test", finetune=recipe)
    model, report = ready
    return ev.score_final(model, report, "test", start), model


def finish_search(session: Session, result: SearchResult, quiet: bool = False,
                  speculation: SpeculativeFinetune | None = None, earlier: Collection[int] = ()) -> dict[str, TrialRecord]:
    """Write and log the results of a finished search; returns the best records.

    ``speculation``: the search's speculative fine-tunes; the budget's winner takes its
    fine-tune from there when the last one was of its policy. ``earlier``: the trial numbers
    that sessions before a resume evaluated."""
    tracker = session.tracker
    run_dir = session.run_dir
    best = best_per_budget(session, result)
    test: dict[str, float] = {}
    ev = session.evaluator.evaluator
    steps = session.config.finetune.steps
    recipe = session.config.finetune
    tuned = {}
    export = None
    onnx_report: dict = {}
    timer = session.timer
    finalists = pick_finalist(session, result, best, recipe, quiet)
    done: dict[int, tuple[float, Any, str]] = {}  # trial -> (test accuracy, fine-tune report, first label)
    for i, (label, r) in enumerate(best.items()):
        if r.number in done:  # the same policy is best for several constraints: fine-tuned and scored once
            test[label], tuned[label], first = done[r.number]
            if not quiet:
                print(f"trial {r.number} is also the best for {label}: its fine-tune for {first} is reused")
            continue
        with stage(f"final fine-tune of trial {r.number} (best for {label}): up to {steps} steps, then the test split", quiet), \
                timer.stage("finetune"):
            metrics, model = _final(ev, r, steps, recipe, speculation if i == 0 else None)
        if i == 0 and speculation is not None:
            speculation.close()
        test[label] = metrics.accuracy
        tuned[label] = ev.last_finetune
        done[r.number] = (test[label], tuned[label], label)
        if i == 0:  # the budget's winner becomes a deployable file, measured for real
            with stage(f"export of trial {r.number}: packing the weights and timing float and exported latency", quiet), \
                    timer.stage("export"):
                export = export_policy(
                    model, session.problem.analysis, r.policy, run_dir / "best_model.ampq",
                    sample_input=(compared := next(iter(session.problem.task.val_loader))[0][:EXPORT_TIMING_BATCH]),
                    float_model=ev.float_model, cost_model=session.cost_model, threads=session.config.run.threads,
                    repeats=EXPORT_TIMING_REPEATS,
                )
            with stage(f"ONNX export of trial {r.number}: integer-layer graph timed in ONNX Runtime", quiet), timer.stage("export_onnx"):
                onnx_report = export_run_onnx(run_dir / "best_model.ampq", run_dir / "best_model.onnx", ev.float_model,
                                              next(iter(session.problem.task.val_loader))[0][:64], session.config.run.threads)
    (run_dir / "result.json").write_text(result.to_json())
    (run_dir / "best_policies.json").write_text(
        json.dumps({label: {"trial": r.number, "val_accuracy": r.accuracy, "test_accuracy": test[label],
                            "val_before_finetune": tuned[label].before.accuracy, "val_after_finetune": tuned[label].after.accuracy,
                            "finetune": tuned[label].to_dict(),
                            "costs": r.costs.to_dict(), "policy": r.policy.to_dict(),
                            **({"finalists": [f.to_dict() for f in finalists]} if i == 0 and finalists else {})}
                    for i, (label, r) in enumerate(best.items())}, indent=1)
    )
    tested = {label: model_tested(tuned.get(label), steps) for label in best}
    table = summary_table(result, best, test, tested)
    (run_dir / "best_policies.md").write_text(table + "\n")
    if export is not None:
        report = with_notes({**export.to_dict(), "compared_samples": len(compared), "onnx": onnx_report})
        (run_dir / "export_report.json").write_text(json.dumps(report, indent=1, default=str))
    with timer.stage("charts"):
        artifacts = [*pareto_artifacts(session, result), run_dir / "best_policies.md", run_dir / "best_policies.json"]
        if export is not None:
            artifacts += [p for p in (run_dir / "best_model.ampq", run_dir / "best_model.onnx", run_dir / "export_report.json")
                          if p.is_file()]
        if best:
            artifacts.append(layer_chart(session, best))
    if tracker is not None:
        mlflow_start = time.perf_counter()
        extra = _parent_extras(result, best, tuned, finalists, onnx_report, speculation)
        publish(session, result, best, test, export, artifacts, extra, tested)
        timer.add("mlflow", time.perf_counter() - mlflow_start)
        tracker.log_parent_metrics(timer.metrics())
    overlap = {"overlap": speculation.report.to_dict()} if speculation is not None else {}
    (run_dir / "timings.json").write_text(json.dumps({**timer.metrics(), "n_proposed": result.n_proposed,
                                                      "n_evaluations": result.n_evaluations,
                                                      "eval_seconds": result.eval_seconds, **overlap}, indent=1))
    if not quiet:
        _print_summary(session, result, best, table, tuned, test, export, onnx_report, speculation, earlier)
    return best


def _print_summary(session: Session, result: SearchResult, best: dict[str, TrialRecord], table: str,
                   tuned: dict[str, Any], test: dict[str, float], export: ExportReport | None, onnx_report: dict,
                   speculation: SpeculativeFinetune | None, earlier: Collection[int] = ()) -> None:
    """The closing lines on the console: the table, what the search spent, the fine-tunes, the files."""
    tracker, run_dir, timer = session.tracker, session.run_dir, session.timer
    ev = session.evaluator.evaluator
    print(f"budget: {limits_text(dict(session.bound.limits))}")
    print(table)
    print(f"\n{search_line(result, earlier)} after {result.sensitivity_evaluations} evaluations' worth of sensitivities "
          f"({session.config.searcher.sensitivity}); results in {run_dir}")
    print(f"time per stage: {timer.summary()}")
    if tracker is not None and tracker.failures:
        print(tracker.failure_summary())
    shown: set[int] = set()
    for label, rep in tuned.items():
        if id(rep) in shown:  # one fine-tune shared by several labels
            continue
        shown.add(id(rep))
        why = {"float": "validation reached the float model's", "patience": "no better checkpoint in "
               f"{session.config.finetune.patience} checks"}.get(rep.stop_reason, "all steps")
        print(f"fine-tune of {label!r}: validation {rep.before.accuracy:.4f} -> {rep.after.accuracy:.4f} "
              f"(best step {rep.best_step} of {rep.steps} taken; stopped: {why}; {rep.seconds:.0f} s)")
    if speculation is not None:
        print(overlap_line(speculation.report))
    if export is not None:
        print(f"exported the best policy to {export.path}: {kb(export.file_bytes):.1f} {SIZE_UNIT} on disk "
              f"(float checkpoint {kb(export.float_file_bytes):.1f} {SIZE_UNIT}), {export.latency_exported_ms:.2f} ms "
              f"vs float {export.latency_float_ms:.2f} ms per batch of {EXPORT_TIMING_BATCH} in torch on "
              f"{export.threads} thread(s)")
        if "error" in onnx_report:
            print(f"no ONNX file: {onnx_report['error']}")
        else:
            first_label = next(iter(best))
            print(deployment_table(onnx_report, export, ev.baseline("test").accuracy, test[first_label]))
            why = slower_reason(onnx_report, dict(session.bound.limits))
            if why:
                print(why)
    print(closing_lines(session))
    sys.stdout.flush()
