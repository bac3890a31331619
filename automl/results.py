"""What a finished search leaves behind: best policies, Pareto front, charts, a summary.

Written to the run directory and to the MLflow parent run; the best policy of the budget
(and of each single constraint) is fine-tuned and scored once on the test split.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agents.records import SearchResult, TrialRecord  # noqa: E402
from automl.budget import format_value  # noqa: E402
from automl.export import export_policy  # noqa: E402
from automl.onnx_export import export_run_onnx  # noqa: E402

if TYPE_CHECKING:
    from automl.runner import Session


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


def summary_table(result: SearchResult, best: dict[str, TrialRecord], test: dict[str, float]) -> str:
    rows = [
        "| best for | trial | val accuracy | test accuracy (fine-tuned) | size | BitOps | mean bits | sparsity | repaired |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in best.items():
        rows.append(
            f"| {label} | {r.number} | {r.accuracy:.4f} | {test.get(label, float('nan')):.4f} | "
            f"{format_value('size', r.costs.size_bytes)} | {format_value('bitops', r.costs.bitops)} | "
            f"{r.policy.mean_weight_bits():.2f} | {r.policy.channel_sparsity():.1%} | {r.repaired} |"
        )
    return "\n".join(rows)


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
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r.cost(metric) for r in result.records]
    ax.scatter(xs, [r.accuracy for r in result.records], s=12, alpha=0.4,
               c=["tab:blue" if r.feasible else "tab:gray" for r in result.records], label="evaluated policies")
    fx = [r.cost(metric) for r in front]
    ax.step(fx, [r.accuracy for r in front], where="post", color="tab:red", label="Pareto front")
    limit = dict(session.bound.limits).get(metric)
    if limit is not None:
        ax.axvline(limit, color="k", ls="--", lw=1, label=f"budget {metric}")
    ax.set_xlabel(metric)
    ax.set_ylabel("validation accuracy")
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


def finish_search(session: Session, result: SearchResult, quiet: bool = False) -> dict[str, TrialRecord]:
    """Write and log the results of a finished search; returns the best records."""
    tracker = session.tracker
    run_dir = session.run_dir
    best = best_per_budget(session, result)
    test: dict[str, float] = {}
    ev = session.evaluator.evaluator
    steps = session.config.finetune_steps
    export = None
    onnx_report: dict = {}
    for i, (label, r) in enumerate(best.items()):
        metrics, model = ev.final(r.policy, steps, "test")
        test[label] = metrics.accuracy
        if i == 0:  # the budget's winner becomes a deployable file, measured for real
            export = export_policy(
                model, session.problem.analysis, r.policy, run_dir / "best_model.ampq",
                sample_input=next(iter(session.problem.task.val_loader))[0], float_model=ev.float_model,
                cost_model=session.cost_model, threads=session.config.threads,
            )
            onnx_report = export_run_onnx(run_dir / "best_model.ampq", run_dir / "best_model.onnx", ev.float_model,
                                          next(iter(session.problem.task.val_loader))[0][:64], session.config.threads)
    (run_dir / "result.json").write_text(result.to_json())
    (run_dir / "best_policies.json").write_text(
        json.dumps({label: {"trial": r.number, "val_accuracy": r.accuracy, "test_accuracy": test[label],
                            "costs": r.costs.to_dict(), "policy": r.policy.to_dict()} for label, r in best.items()}, indent=1)
    )
    table = summary_table(result, best, test)
    (run_dir / "best_policies.md").write_text(table + "\n")
    if export is not None:
        (run_dir / "export_report.json").write_text(json.dumps({**export.to_dict(), "onnx": onnx_report}, indent=1, default=str))
    artifacts = [*pareto_artifacts(session, result), run_dir / "best_policies.md", run_dir / "best_policies.json"]
    if export is not None:
        artifacts += [p for p in (run_dir / "best_model.ampq", run_dir / "best_model.onnx", run_dir / "export_report.json")
                      if p.is_file()]
    if best:
        artifacts.append(layer_chart(session, best))
    if tracker is not None:
        tracker.flush()
        for path in artifacts:
            tracker.log_parent_file(path)
        runs = tracker.logged_trials()
        tracker.tag_best({label: runs[r.number] for label, r in best.items() if r.number in runs})
        metrics = {"n_evaluations": float(result.n_evaluations), "wall_seconds": result.wall_seconds,
                   "mlflow_log_seconds": tracker.log_seconds}
        first = next(iter(best.values()), None)
        if first is not None:
            metrics.update({"best_val_accuracy": first.accuracy, "best_test_accuracy": next(iter(test.values())),
                            "best_size_kb": first.costs.size_bytes / 1024, "best_bitops_g": first.costs.bitops / 1e9})
        if export is not None:
            if "error" not in onnx_report:
                metrics.update({"onnx_speedup_b1": onnx_report["speedup_b1"], "onnx_speedup_batch": onnx_report["speedup_batch"]})
            metrics.update({"export_file_kb": export.file_bytes / 1024, "export_predicted_kb": (export.predicted_bytes or 0) / 1024,
                            "export_latency_ms": export.latency_exported_ms, "float_latency_ms": export.latency_float_ms})
        tracker.log_parent_metrics(metrics)
    if not quiet:
        print(table)
        stats = session.evaluator.stats
        print(f"\n{result.n_evaluations} evaluations in {result.wall_seconds:.0f} s "
              f"(cache hits {stats.hits}); results in {run_dir}")
        if export is not None:
            print(f"exported the best policy to {export.path}: {export.file_bytes / 1024:.1f} KiB on disk "
                  f"(float checkpoint {export.float_file_bytes / 1024:.1f} KiB), {export.latency_exported_ms:.2f} ms "
                  f"vs float {export.latency_float_ms:.2f} ms per batch on {export.threads} thread(s)")
            if "error" in onnx_report:
                print(f"no ONNX file: {onnx_report['error']}")
            else:
                print(f"exported the ONNX model to {onnx_report['onnx_path']} (ONNX Runtime): "
                      f"{onnx_report['latency_b1_ms']:.3f} ms vs float ONNX {onnx_report['float_latency_b1_ms']:.3f} ms at "
                      f"batch 1, {onnx_report['latency_batch_ms']:.2f} vs {onnx_report['float_latency_batch_ms']:.2f} ms at "
                      f"batch {onnx_report['batch']}")
        print(f"open the UI: automl ui --output {session.config.output}    then: automl best --output {session.config.output}")
        sys.stdout.flush()
    return best
