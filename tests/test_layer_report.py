"""Per-layer tables and figures, run descriptions, the UI's view and the unit convention."""

from __future__ import annotations

import json

import numpy as np
import pytest

from automl.analysis import analyse
from automl.cost import CostModel
from automl.cost.units import cost_metrics, kb, limit_metrics
from automl.problem.budget import Budget, format_value
from automl.tracking.layer_report import HEADER, html_table, layer_figure, layer_params, layer_rows, markdown_table
from automl.tracking.ui import (
    MAX_NOTE,
    ML_VIEW,
    RANK,
    SEARCH_TAG,
    child_note,
    experiment_path,
    parent_note,
    run_path,
    search_path,
    search_view_key,
    search_view_state,
    view_state,
)
from search_spaces import SearchSpace


@pytest.fixture
def priced(tiny_resnet):
    import torch

    analysis = analyse(tiny_resnet, torch.zeros(1, 1, 28, 28))
    space = SearchSpace.build(analysis)
    return space, CostModel(analysis, space)


def test_rows_follow_the_policy_and_the_cost_model(priced, rng):
    space, cost_model = priced
    policy = space.resolve(space.sample(rng))
    rows = layer_rows(cost_model, policy)
    assert [r.name for r in rows] == list(space.names)
    total = cost_model.price(policy).size_bytes
    assert sum(r.size_bytes for r in rows) <= total + 1e-6
    assert sum(r.size_share for r in rows) == pytest.approx(sum(r.size_bytes for r in rows) / total)
    for row, (_, lp) in zip(rows, policy, strict=True):
        assert row.act_bits == lp.act_bits and row.channels == len(lp.weight_bits)
        assert row.pruned == sum(1 for b in lp.weight_bits if b == 0)
        assert {b for g in row.group_bits for b in g} == set(lp.weight_bits)


def test_uniform_policy_rows(priced):
    space, cost_model = priced
    rows = layer_rows(cost_model, space.uniform(4, 8))
    pinned = {s.name for s in space.layers if s.pinned}
    for row in rows:
        bits = 8 if row.name in pinned else 4
        assert row.pruned == 0 and all(g == (bits,) for g in row.group_bits)


def test_partly_pruned_group_and_the_tables(priced):
    space, cost_model = priced
    policy = space.uniform(4, 8, sparsity=0.5)
    rows = layer_rows(cost_model, policy)
    assert any(r.pruned for r in rows)
    md = markdown_table(rows)
    lines = md.splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |" and len(lines) == 2 + len(rows)
    assert all(line.count("|") == len(HEADER) + 1 for line in lines)  # no cell breaks the table
    page = html_table(rows, "trial <1>")
    assert "trial &lt;1&gt;" in page and page.count("<tr>") == 1 + len(rows)


def test_layer_figure_is_a_png(priced, tmp_path):
    space, cost_model = priced
    path = layer_figure(layer_rows(cost_model, space.uniform(3, 4)), tmp_path / "layers.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_units_are_decimal_kilobytes(priced):
    space, cost_model = priced
    costs = cost_model.float_costs()
    metrics = cost_metrics(costs, "float_")
    assert metrics["float_size_kB"] == costs.size_bytes / 1000 == kb(costs.size_bytes)
    assert metrics["float_bitops_M"] == costs.bitops / 1e6
    assert format_value("size", 135_600) == "135.6 kB"
    assert Budget.parse(["size<=2kB"]).constraints[0].limit == 2000
    assert limit_metrics({"size": 2500.0, "bitops": 3e6, "latency@bitserial": 2.0}) == {
        "budget_size_kB": 2.5, "budget_bitops_M": 3.0, "budget_latency_ms.bitserial": 2.0}


def test_links_open_the_machine_learning_view():
    assert experiment_path("7").startswith("#/experiments/7/runs?") and ML_VIEW in experiment_path("7")
    assert run_path("7", "abc") == f"#/experiments/7/runs/abc?{ML_VIEW}"
    state = json.loads(view_state(["bitserial"]))
    assert "metrics.`latency_ms.bitserial`" in state["selectedColumns"]
    assert state["selectedColumns"][0] == "metrics.`val_accuracy`" and state["orderByAsc"] is False
    # Several searches in one experiment: the experiment's view groups runs by search.
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": SEARCH_TAG}]


def test_a_search_view_lists_one_search_best_first():
    assert search_path("7", "p1") == f"#/experiments/7/runs?viewStateShareKey={search_view_key('p1')}&{ML_VIEW}"
    running = json.loads(search_view_state("tpe-20260101-000000"))
    assert running["searchFilter"] == f"tags.`{SEARCH_TAG}` = 'tpe-20260101-000000'"
    assert (running["orderByKey"], running["orderByAsc"]) == ("metrics.`val_accuracy`", False)
    done = json.loads(search_view_state("tpe-20260101-000000", ["ort-cpu"], ranked=True))
    assert (done["orderByKey"], done["orderByAsc"]) == (f"metrics.`{RANK}`", True)
    assert done["selectedColumns"][0] == f"metrics.`{RANK}`" and "metrics.`latency_ms.ort-cpu`" in done["selectedColumns"]


def test_layer_params_list_every_layer_in_network_order(priced):
    space, cost_model = priced
    rows = layer_rows(cost_model, space.uniform(4, 8))
    params = layer_params(rows)
    assert [k.split(": ", 1)[1] for k in params] == [r.name for r in rows]
    assert list(params) == sorted(params)  # zero-padded: sorted is network order
    first = next(iter(params.values()))
    assert first.startswith("W ") and "| A 8 |" in first and "pruned 0/" in first
    from mlflow.utils.validation import _validate_param_name

    for key in params:
        _validate_param_name(key)


def _record(space, cost_model, number=3):
    from agents.records import TrialRecord
    from automl.problem.metrics import Metrics

    policy = space.uniform(4, 8)
    return TrialRecord(number=number, proposed=policy, policy=policy, metrics=Metrics(0.91, 0.3, 0.01, 2),
                       costs=cost_model.price(policy), feasible=True, searcher="random")


def test_notes_name_and_link_the_best_runs(priced):
    space, cost_model = priced
    record = _record(space, cost_model)
    limits = {"size": 4000.0}
    note = parent_note("5", "tpe", 40, limits, {"budget: size<=0.2x": (record, "run42", 0.88, "fine-tuned, step 9 of 9")},
                       0.95, 20_000.0, parent_id="p7")
    assert f"[trial 3]({run_path('5', 'run42')})" in note
    assert "0.9100" in note and "0.8800" in note and "size <= 4 kB" in note and search_path("5", "p7") in note
    assert "(fine-tuned, step 9 of 9)" in note
    table = markdown_table(layer_rows(cost_model, record.policy))
    child = child_note(record, "budget: size<=0.2x", 0.88, table, limits, "not fine-tuned: --finetune-steps 0")
    assert table in child and "trial 3" in child
    assert "(not fine-tuned: --finetune-steps 0)" in child and "(fine-tuned" not in child
    # MLflow shows a description's first 150 px: the pointer to the per-layer parameters comes before the budget.
    assert child.index("**Parameters**") < child.index("Budget")
    long = child_note(record, "x", 0.88, table * 40, limits)
    assert len(long) <= MAX_NOTE and "layers.html" in long.splitlines()[-1]


def test_rows_of_random_policies_never_lose_a_channel(priced):
    space, cost_model = priced
    rng = np.random.default_rng(1)
    for _ in range(5):
        rows = layer_rows(cost_model, space.resolve(space.sample(rng)))
        assert all(0 <= r.pruned <= r.channels for r in rows)
