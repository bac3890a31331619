"""Reading results back from the tracking store for `automl best` and `automl show`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from automl.errors import TrackingError
from automl.tracking.tracker import BEST_TAG, PARENT_TAG, RUN_DIR_TAG, TRIAL_TAG, _quiet_mlflow, check_tracking


def _client(uri: str):
    _quiet_mlflow()
    check_tracking(uri)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _limits(parent) -> str:
    """The parent's absolute budget limits from its ``budget_*`` metrics (see automl.cost.units)."""
    parts = []
    for key, value in sorted(parent.data.metrics.items()):
        if not key.startswith("budget_"):
            continue
        name = key[len("budget_"):]
        if name.startswith("latency_ms."):
            parts.append(f"latency@{name[len('latency_ms.'):]} <= {value:.4g} ms")
        else:
            metric, unit = name.rsplit("_", 1)
            unit = {"bitops": "MBitOps", "macs": "MMACs"}.get(metric, unit)
            parts.append(f"{metric} <= {value:.4g} {unit}")
    return ", ".join(parts) or "n/a"


def _num(metrics: dict, key: str, digits: int, fmt: str = "f") -> str:
    return f"{metrics[key]:.{digits}{fmt}}" if key in metrics else "n/a"


def _search_title(parent) -> str:
    data, info = parent.data, parent.info
    done = int(data.metrics.get("n_evaluations", 0)) if "n_evaluations" in data.metrics else None
    evaluations = f"{done} evaluations" if done is not None else f"{data.params.get('run.evaluations', '?')} evaluations asked"
    return (f"search {info.run_name} ({data.tags.get('searcher', '?')}, {evaluations}, {info.status}): "
            f"budget {data.tags.get('budget', '?')} = {_limits(parent)}")


def _journal_count(parent) -> int | None:
    """Trials in the journal of the parent's run directory (``None`` when it is not readable here)."""
    run_dir = parent.data.tags.get(RUN_DIR_TAG)
    try:
        text = (Path(run_dir) / "trials.jsonl").read_text() if run_dir else None
    except OSError:
        return None
    return None if text is None else sum(1 for line in text.splitlines() if line.strip())


def _resume_line(parent, resume_command: str) -> str:
    """How far an unfinished search got and the command that continues it."""
    run_dir = parent.data.tags.get(RUN_DIR_TAG)
    done = _journal_count(parent)
    asked = parent.data.params.get("run.evaluations", "?")
    status = parent.info.status
    why = {"KILLED": "stopped (Ctrl-C, SIGTERM or a killed process)", "FAILED": "ended by an error",
           "RUNNING": "still running"}.get(status, status)
    progress = f"{done} of {asked} evaluations in its journal" if done is not None else f"{asked} evaluations asked"
    if status == "RUNNING":
        return f"  {why}: {progress}; its result appears here when it finishes."
    if not run_dir or done is None:
        return f"  {why}: {progress}; its run directory {run_dir or '(unknown)'} is not readable from here."
    return f"  {why}: {progress}. Continue with: {resume_command} {shlex.quote(run_dir)}"


def best_table(uri: str, experiment: str, resume_command: str = "automl search --resume") -> str:
    """The best policies of every search in ``experiment``, newest search first.

    One block per search (its budget as given and as absolute limits), then one row per
    best child run: trial, validation and test accuracy, costs (kB = 1000 B), repair. A
    search that was KILLED or FAILED (or still runs) gets a line with its progress and
    ``resume_command <run dir>``, whether or not it has best policies yet.
    """
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise TrackingError(f"no experiment {experiment!r} at {uri} (it holds {names or 'none'}); run `automl search` "
                            "first, or pass --experiment with one of those names")
    runs = client.search_runs([exp.experiment_id], f"tags.{BEST_TAG} = 'true'", order_by=["attributes.start_time DESC"])
    unfinished = client.search_runs(
        [exp.experiment_id], "tags.`automl.kind` = 'search' and attributes.status != 'FINISHED'", max_results=1000,
    )
    if not runs and not unfinished:
        return f"no search in experiment {experiment!r} has finished yet, and none was stopped"
    by_parent: dict[str, list] = {r.info.run_id: [] for r in unfinished}
    for r in runs:
        by_parent.setdefault(r.data.tags.get(PARENT_TAG, ""), []).append(r)
    parents = {r.info.run_id: r for r in unfinished}
    for parent_id in by_parent:
        if parent_id not in parents:
            try:
                parents[parent_id] = client.get_run(parent_id)
            except Exception:  # noqa: BLE001 - a child whose parent was deleted still prints
                parents[parent_id] = None
    order = sorted(by_parent, key=lambda p: -(parents[p].info.start_time or 0) if parents[p] is not None else 0)
    latency = sorted({k for r in runs for k in r.data.metrics if k.startswith("latency_ms.")})
    head = ["best for", "trial", "val accuracy", "test accuracy", "size kB", "MBitOps", "MMACs",
            *(f"{k[len('latency_ms.'):]} ms" for k in latency), "mean bits", "sparsity", "repaired", "run id"]
    blocks = []
    for parent_id in order:
        parent, children = parents[parent_id], by_parent[parent_id]
        lines = [_search_title(parent) if parent is not None else f"search {parent_id or '?'}"]
        if parent is not None and parent.info.status != "FINISHED":
            lines.append(_resume_line(parent, resume_command))
        if children:
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in sorted(children, key=lambda c: c.data.tags.get("best_for", "")):
            m = r.data.metrics
            cells = [r.data.tags.get("best_for", ""), r.data.tags.get(TRIAL_TAG, "?"), _num(m, "val_accuracy", 4),
                     _num(m, "test_accuracy", 4), _num(m, "size_kB", 2), _num(m, "bitops_M", 4, "g"), _num(m, "macs_M", 4, "g"),
                     *(_num(m, k, 3) for k in latency), _num(m, "mean_bits", 2),
                     f"{m['sparsity']:.1%}" if "sparsity" in m else "n/a",
                     _repair(r.data.tags), r.info.run_id]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _repair(tags: dict) -> str:
    if tags.get("repaired") != "true":
        return "no"
    return tags.get("repair_summary", "yes")


def show_run(uri: str, run_id: str) -> str:
    """One evaluated policy, layer by layer: activation bits, sparsity and channel bits."""
    client = _client(uri)
    try:
        run = client.get_run(run_id)
        text = client.download_artifacts(run_id, "policy.json")
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"run {run_id!r} has no policy at {uri}: {exc}. List runs with `automl best`.") from exc
    policy = json.loads(open(text).read())  # noqa: SIM115
    m = run.data.metrics
    lines = [
        f"run {run_id}: val accuracy {m.get('val_accuracy', float('nan')):.4f}, size {m.get('size_kB', float('nan')):.2f} kB, "
        f"{m.get('bitops_M', float('nan')):.1f} MBitOps",
        f"{'layer':<26}{'act':>4}{'pruned':>8}  weight bits per channel (counts)",
    ]
    for name, lp in policy["layers"].items():
        bits = lp["weight_bits"]
        counts: dict[int, int] = {}
        for b in bits:
            counts[b] = counts.get(b, 0) + 1
        hist = " ".join(f"{b}b x{n}" for b, n in sorted(counts.items()) if b > 0)
        lines.append(f"{name:<26}{lp['act_bits']:>4}{counts.get(0, 0) / len(bits):>8.0%}  {hist}")
    return "\n".join(lines)
