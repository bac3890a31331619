"""What makes a search readable in the MLflow UI: the views it opens in, run descriptions, links.

MLflow 3.18's UI chooses between its GenAI and its classic machine-learning views from a
``workflowType`` switch kept in the browser (a ``?workflowType=machine_learning`` query
parameter sets it; the default is GenAI), not from the experiment. Earlier MLflow 3
releases read the experiment tag ``mlflow.experimentKind``, which also stops the UI from
asking for the experiment's type. So the experiment carries the tag and every link we
print or write carries the query parameter.

Several searches share one experiment. MLflow's runs table nests child runs under their
parent only while it is sorted by start time without a filter, so a table sorted by accuracy
mixes the trials of every search. So each run carries the tag ``automl.search`` (its search's
parent run name) and the runs table opens on shared views (the experiment tags
``mlflow.sharedViewState.<key>``, selected by ``?viewStateShareKey=<key>``):

* ``automl``: every run grouped by ``automl.search``, one collapsible group per search;
* ``search-<parent run id>``: one search's runs alone (a filter on its tag), best first. While
  it runs, by validation accuracy; once it has finished, by the metric ``rank`` written then
  (1 = the policy it returns, then the other best-for rows, the feasible policies by accuracy,
  the infeasible ones), because an accuracy sort can put an over-budget trial, or a tie
  broken otherwise, above the policy the search returns.

One experiment per search would also separate them, but would split ``automl best`` and the
``--experiment`` option across experiments; the shared views give the same table per search.
Run descriptions are the ``mlflow.note.content`` tag (Markdown); MLflow shows only their first
150 pixels on a run's page, so a best trial's per-layer table is also in its Parameters
(``layer NN: <name>``), which the page shows in full.
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
VIEW_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "automl"
VIEW_TAG = f"{VIEW_PREFIX}{VIEW_KEY}"
SEARCH_TAG = "automl.search"  # every run of a search carries its parent run's name: the views filter and group by it
RANK = "rank"
ML_VIEW = "workflowType=machine_learning"
MAX_NOTE = 7900  # MLflow caps a tag value at 8000 characters
COLUMNS = ("val_accuracy", "test_accuracy", "size_kB", "bitops_M", "macs_M", "mean_bits", "sparsity", "feasible", "repaired")


def experiment_path(experiment_id: str) -> str:
    """The runs table of the experiment, grouped by search, in the machine-learning UI."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&{ML_VIEW}"


def search_view_key(parent_id: str) -> str:
    return f"search-{parent_id}"


def search_path(experiment_id: str, parent_id: str) -> str:
    """The runs of one search alone, best first, in the machine-learning UI."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={search_view_key(parent_id)}&{ML_VIEW}"


def run_path(experiment_id: str, run_id: str) -> str:
    """One run's page in the machine-learning UI (relative: works inside run descriptions)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def _columns(latency_profiles: Sequence[str], first: Sequence[str] = ()) -> list[str]:
    metrics = [*first, *COLUMNS[:4], *(f"latency_ms.{p}" for p in latency_profiles), *COLUMNS[4:]]
    return [f"metrics.`{m}`" for m in metrics] + ["tags.`best_for`"]


def view_state(latency_profiles: Sequence[str] = ()) -> str:
    """The experiment's view: runs grouped by search, best validation accuracy first within each."""
    columns = _columns(latency_profiles)
    return json.dumps({"selectedColumns": columns, "columnOrder": columns, "orderByKey": "metrics.`val_accuracy`",
                       "orderByAsc": False,
                       "groupBy": {"aggregateFunction": "max", "groupByKeys": [{"mode": "tag", "groupByData": SEARCH_TAG}]}})


def search_view_state(search: str, latency_profiles: Sequence[str] = (), ranked: bool = False) -> str:
    """One search's view: its runs only; by ``rank`` once it has finished, else by validation accuracy."""
    columns = _columns(latency_profiles, (RANK,) if ranked else ())
    order = {"orderByKey": f"metrics.`{RANK}`", "orderByAsc": True} if ranked else {
        "orderByKey": "metrics.`val_accuracy`", "orderByAsc": False}
    quoted = search.replace("'", "\\'")
    return json.dumps({"selectedColumns": columns, "columnOrder": columns, **order,
                       "searchFilter": f"tags.`{SEARCH_TAG}` = '{quoted}'"})


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
    """Absolute budget limits, e.g. ``size <= 138.6 kB (kB = 1000 B)``; the unit note only where a limit is in bytes."""
    text = ", ".join(f"{m} <= {format_value(m.split('@')[0], v)}" for m, v in limits.items())
    return text + unit_note(limits)


def unit_note(limits: Mapping[str, float] | Sequence[str]) -> str:
    """`` (kB = 1000 B)`` when a limit is a size in bytes (size, peak_act), else empty."""
    return f" ({SIZE_UNIT} = 1000 B)" if any(m.split("@")[0] in ("size", "peak_act") for m in limits) else ""


def _headline(record: TrialRecord, test_accuracy: float | None, tested: str) -> str:
    return f"val accuracy {_fmt(record.accuracy)}, test accuracy {_fmt(test_accuracy)} ({tested}), {_costs_text(record)}"


def child_note(record: TrialRecord, label: str, test_accuracy: float | None, table: str, limits: Mapping[str, float],
               tested: str = "fine-tuned") -> str:
    """Description of a best child run: what it is best for, its numbers, where its layers are, then the layers.

    ``tested`` says which model the test accuracy is of (see :func:`automl.runs.results.model_tested`)."""
    text = "\n".join([
        f"**Best for {label}: trial {record.number}.** {_headline(record, test_accuracy, tested)}.",
        "",
        "**Per layer**: the **Parameters** table below (`layer NN: <name>`: weight bits per channel group, input "
        "activation bits, pruned channels, size), the table at the end of this description, and the artifacts "
        "`layers.html`, `layers.png`, `layers.md`, `layers.json`.",
        "",
        f"Budget {limits_text(limits)}. Mean weight bits {record.policy.mean_weight_bits():.2f}, "
        f"channel sparsity {record.policy.channel_sparsity():.1%}; {_repair_text(record)}.",
        "",
        table,
    ])
    if len(text) > MAX_NOTE:
        text = text[: MAX_NOTE - 80].rsplit("\n", 1)[0] + "\n\n(table cut: the full table is the artifact `layers.html`)"
    return text


def parent_note(
    experiment_id: str, searcher: str, n_evaluations: int, limits: Mapping[str, float],
    best: Mapping[str, tuple[TrialRecord, str | None, float | None, str]], float_val: float | None,
    float_size_bytes: float | None, parent_id: str | None = None,
) -> str:
    """Description of the search's parent run: its best child runs (linked) and the budget.

    ``best`` maps a label (``budget: size<=0.125x``) to (record, child run id, test accuracy,
    which model was tested); the first label is the whole budget. With ``parent_id``, the link
    to the runs opens this search's own view.
    """
    def link(r: TrialRecord, run_id: str | None) -> str:
        return f"[trial {r.number}]({run_path(experiment_id, run_id)})" if run_id else f"trial {r.number}"

    runs = search_path(experiment_id, parent_id) if parent_id else experiment_path(experiment_id)
    items = list(best.items())
    if items:
        label, (r, run_id, test, tested) = items[0]
        lines = [f"**Best policy: {link(r, run_id)}** ({label}): {_headline(r, test, tested)}; "
                 f"repaired: {repair_summary(r.repair)}."]
    else:
        lines = ["**No evaluated policy met the budget.**"]
    lines += [
        "",
        f"{searcher}, {n_evaluations} policies evaluated: [this search's runs, best first]({runs}). "
        f"Budget {limits_text(limits)}. Float model: validation accuracy {_fmt(float_val)}"
        + (f", size {kb(float_size_bytes):.2f} {SIZE_UNIT}" if float_size_bytes else "") + ".",
    ]
    if len(items) > 1:
        lines += ["", "| best for | run | val accuracy | test accuracy | tested model | size kB | MBitOps | repaired |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, (r, run_id, test, tested) in items:
            lines.append(f"| {label} | {link(r, run_id)} | {_fmt(r.accuracy)} | {_fmt(test)} | {tested} | "
                         f"{kb(r.costs.size_bytes):.2f} | {r.costs.bitops / 1e6:.4g} | {'yes' if r.repaired else 'no'} |")
    lines += ["", "Artifacts: `pareto_front.png` (accuracy against cost, with the budget line), `best_policies.md`, "
              "`best_policies_layers.png`, `best_model.ampq` and `best_model.onnx` (the exported budget winner), "
              "`export_report.json` (what the exported files are; its `notes` explain every figure)."]
    return "\n".join(lines)[:MAX_NOTE]


def ui_banner(url: str, experiment: str, experiment_id: str | None, searches: Sequence[Mapping[str, str]] = ()) -> str:
    """What ``automl ui`` prints once the server answers: where to look.

    ``searches`` are the newest search parent runs (``run_id``, ``name``, ``status``, ``budget``)."""
    if experiment_id is None:
        return f"no experiment {experiment!r} in this store yet; open {url}/#/experiments?{ML_VIEW}"
    lines = [f"all searches of {experiment!r}, grouped by search: {url}/{experiment_path(experiment_id)}"]
    if searches:
        lines.append("each search alone, best trial first (newest first):")
        lines += [f"  {s['name']} ({s['status']}, budget {s.get('budget', '?')}): "
                  f"{url}/{search_path(experiment_id, s['run_id'])}" for s in searches]
    return "\n".join(lines)
