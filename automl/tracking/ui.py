"""What makes a search readable in the MLflow UI: the view it opens in, run descriptions, links.

MLflow 3.17's UI chooses between its GenAI and its classic machine-learning views from a
``workflowType`` switch kept in the browser (a ``?workflowType=machine_learning`` query
parameter sets it; the default is GenAI), not from the experiment. Earlier MLflow 3
releases read the experiment tag ``mlflow.experimentKind``, which also stops the UI from
asking for the experiment's type. So the experiment carries the tag and every link we
print or write carries the query parameter.

The runs table opens on a shared view (the experiment tag ``mlflow.sharedViewState.<key>``,
selected by ``?viewStateShareKey=<key>``): the metric columns a user compares, sorted by
validation accuracy. Run descriptions are the ``mlflow.note.content`` tag (Markdown).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from automl.cost.units import SIZE_UNIT, kb
from automl.problem.budget import format_value

if TYPE_CHECKING:
    from agents.records import TrialRecord
    from automl.problem.repair import RepairRecord

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"
VIEW_KEY = "automl"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
ML_VIEW = "workflowType=machine_learning"
MAX_NOTE = 7900  # MLflow caps a tag value at 8000 characters
COLUMNS = ("val_accuracy", "test_accuracy", "size_kB", "bitops_M", "macs_M", "mean_bits", "sparsity", "feasible", "repaired")


def experiment_path(experiment_id: str) -> str:
    """The runs table of the experiment, on our shared view, in the machine-learning UI."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&{ML_VIEW}"


def run_path(experiment_id: str, run_id: str) -> str:
    """One run's page in the machine-learning UI (relative: works inside run descriptions)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def view_state(latency_profiles: Sequence[str] = ()) -> str:
    """The shared view's JSON: metric columns (and a tag) shown, best validation accuracy first."""
    metrics = [*COLUMNS[:4], *(f"latency_ms.{p}" for p in latency_profiles), *COLUMNS[4:]]
    columns = [f"metrics.`{m}`" for m in metrics] + ["tags.`best_for`"]
    return json.dumps({"selectedColumns": columns, "columnOrder": columns, "orderByKey": "metrics.`val_accuracy`",
                       "orderByAsc": False})


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _costs_text(record: TrialRecord) -> str:
    c = record.costs
    parts = [f"size {kb(c.size_bytes):.2f} {SIZE_UNIT}", f"{c.bitops / 1e6:.4g} MBitOps", f"{c.macs / 1e6:.4g} MMACs"]
    parts += [f"latency {ms:.3f} ms ({name})" for name, ms in c.latency_ms]
    return ", ".join(parts)


def repair_summary(repair: RepairRecord | None) -> str:
    """One line on how a proposed policy was changed to meet the budget."""
    if repair is None or not repair.changed:
        return "no"
    text = f"yes: {len(repair.changes)} layer(s) changed"
    if repair.before is not None and repair.after is not None:
        text += f", size {kb(repair.before.size_bytes):.2f} -> {kb(repair.after.size_bytes):.2f} {SIZE_UNIT}"
    if repair.steps:
        text += f" ({'; '.join(repair.steps[:3])}{'; ...' if len(repair.steps) > 3 else ''})"
    return text[:300]


def _repair_text(record: TrialRecord) -> str:
    if not record.repaired:
        return "not repaired (the searcher's policy met the budget as proposed)"
    return f"repaired to meet the budget, {repair_summary(record.repair)}"


def limits_text(limits: Mapping[str, float]) -> str:
    """Absolute budget limits, e.g. ``size <= 138.6 kB``."""
    return ", ".join(f"{m} <= {format_value(m.split('@')[0], v)}" for m, v in limits.items())


def _headline(record: TrialRecord, test_accuracy: float | None) -> str:
    return (f"val accuracy {_fmt(record.accuracy)}, test accuracy {_fmt(test_accuracy)} (fine-tuned), "
            f"{_costs_text(record)}")


def child_note(record: TrialRecord, label: str, test_accuracy: float | None, table: str, limits: Mapping[str, float]) -> str:
    """Description of a best child run: what it is best for, its numbers, then its layers."""
    text = "\n".join([
        f"**Best for {label}: trial {record.number}.** {_headline(record, test_accuracy)}.",
        "",
        f"Budget {limits_text(limits)} ({SIZE_UNIT} = 1000 B). Mean weight bits {record.policy.mean_weight_bits():.2f}, "
        f"channel sparsity {record.policy.channel_sparsity():.1%}; {_repair_text(record)}.",
        "",
        "**Per layer** (also the artifacts `layers.html`, `layers.png`, `layers.md`, `layers.json`):",
        "",
        table,
    ])
    if len(text) > MAX_NOTE:
        text = text[: MAX_NOTE - 80].rsplit("\n", 1)[0] + "\n\n(table cut: the full table is the artifact `layers.html`)"
    return text


def parent_note(
    experiment_id: str, searcher: str, n_evaluations: int, limits: Mapping[str, float],
    best: Mapping[str, tuple[TrialRecord, str | None, float | None]], float_val: float | None, float_size_bytes: float | None,
) -> str:
    """Description of the search's parent run: its best child runs (linked) and the budget.

    ``best`` maps a label (``budget: size<=0.125x``) to (record, child run id, test accuracy);
    the first label is the whole budget.
    """
    def link(r: TrialRecord, run_id: str | None) -> str:
        return f"[trial {r.number}]({run_path(experiment_id, run_id)})" if run_id else f"trial {r.number}"

    items = list(best.items())
    if items:
        label, (r, run_id, test) = items[0]
        lines = [f"**Best policy: {link(r, run_id)}** ({label}): {_headline(r, test)}; repaired: {repair_summary(r.repair)}."]
    else:
        lines = ["**No evaluated policy met the budget.**"]
    lines += [
        "",
        f"Budget {limits_text(limits)} ({SIZE_UNIT} = 1000 B). Float model: validation accuracy {_fmt(float_val)}"
        + (f", size {kb(float_size_bytes):.2f} {SIZE_UNIT}" if float_size_bytes else "")
        + f". {searcher}, {n_evaluations} policies evaluated: [all runs, best first]({experiment_path(experiment_id)}).",
    ]
    if len(items) > 1:
        lines += ["", "| best for | run | val accuracy | test accuracy (fine-tuned) | size kB | MBitOps | repaired |",
                  "|---|---|---|---|---|---|---|"]
        for label, (r, run_id, test) in items:
            lines.append(f"| {label} | {link(r, run_id)} | {_fmt(r.accuracy)} | {_fmt(test)} | {kb(r.costs.size_bytes):.2f} | "
                         f"{r.costs.bitops / 1e6:.4g} | {'yes' if r.repaired else 'no'} |")
    lines += ["", "Artifacts: `pareto_front.png` (accuracy against cost, with the budget line), `best_policies.md`, "
              "`best_policies_layers.png`, `best_model.ampq` (the exported budget winner)."]
    return "\n".join(lines)[:MAX_NOTE]


def ui_banner(url: str, uri: str, experiment: str) -> str:
    """What ``automl ui`` prints once the server answers: the address to open."""
    line = f"MLflow UI: {url}  (store {uri}; Ctrl-C stops it)"
    try:
        from mlflow import MlflowClient

        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - the banner must not stop the server
        exp = None
    if exp is None:
        return f"{line}\nno experiment {experiment!r} in this store yet; open {url}/#/experiments?{ML_VIEW}"
    return f"{line}\nopen {url}/{experiment_path(exp.experiment_id)}  (runs of {experiment!r}, best first)"
