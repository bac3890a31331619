"""``automl pareto``: a budget sweep against the uniform curves, one sensitivity stage, honest files."""

from __future__ import annotations

import csv
import json
import math

import pytest

from automl.cli import main
from automl.pareto.config import ParetoConfig
from automl.runs.config import SearchConfig
from search_spaces.space import SpaceConfig

SMALL_SPACE = {"weight_bits": (0, 2, 4, 8), "act_bits": (4, 8), "max_sparsity": 0.5, "sparsity_step": 0.25}


def small_config(tmp_path, evaluations: int = 3, finetune_steps: int = 2) -> SearchConfig:
    return SearchConfig(task="tests.tasks:small_resnet", space=SMALL_SPACE,
                        searcher={"name": "random", "sensitivity": "fisher"},
                        run={"evaluations": evaluations, "output": str(tmp_path / "out")},
                        finetune={"steps": finetune_steps, "eval_every": 1})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One sweep over three budgets of a trained miniature ResNet-8, sensitivity computations counted."""
    import automl.runs.sensitivity_stage as stage_module
    from automl.pareto.sweep import run_pareto
    from tests.tasks import small_resnet

    tmp_path = tmp_path_factory.mktemp("pareto")
    calls = []
    real = stage_module.curvature_sensitivities

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    stage_module.curvature_sensitivities = counted
    try:
        config = ParetoConfig(small_config(tmp_path), ("0.25x", "0.12x", "0.16x"))
        result = run_pareto(config, task=small_resnet(), quiet=True)
    finally:
        stage_module.curvature_sensitivities = real
    return result, len(calls), tmp_path


def _rows(result) -> list[dict[str, str]]:
    with result.files["csv"].open() as fh:
        return list(csv.DictReader(fh))


def test_sweep_writes_csv_and_png_with_every_budget_and_method(sweep):
    result, _, _ = sweep
    rows = _rows(result)
    assert [(r["budget"], r["method"]) for r in rows] == [
        (b, m) for b in ("size<=0.25x", "size<=0.16x", "size<=0.12x") for m in ("mixed", "uniform", "uniform+pruning")
    ]  # loosest budget first, whatever order they were given in
    assert result.files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.files["png"].stat().st_size > 20_000
    for r in rows:
        if r["policy"] == "none fits":
            continue
        assert float(r["cost_kB"]) <= float(r["limit_kB"]) * (1 + 1e-6), r
        assert r["finetune_steps"] == "2"
        shares = [float(v) for k, v in r.items() if k.startswith("share_w")]
        assert math.isclose(sum(shares), 1.0, abs_tol=2e-3), r
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
    # the uniform curves: 8/4/2-bit weights (what this space has) x both activation widths x 3 sparsity levels
    with result.files["uniform_csv"].open() as fh:
        uniform = list(csv.DictReader(fh))
    assert {int(u["weight_bits"]) for u in uniform} <= {8, 4, 2} and {int(u["act_bits"]) for u in uniform} == {4, 8}
    assert any(float(u["sparsity"]) > 0 for u in uniform) and any(float(u["sparsity"]) == 0 for u in uniform)


def test_front_is_the_best_so_far_envelope_and_never_rises_as_the_budget_tightens(sweep):
    result, _, _ = sweep
    mixed = [p for p in result.front("mixed")]
    accs = [p.val_accuracy for p in mixed if p.policy is not None]
    assert len(accs) == 3
    assert all(a >= b for a, b in zip(accs, accs[1:], strict=False)), accs
    # recomputed from the journals of all three searches: the best record that fits each budget
    records = []
    for level in sorted(result.sweep_dir.glob("level-*")):
        records += [json.loads(line) for line in (level / "trials.jsonl").read_text().splitlines()]
    for p in mixed:
        fits = [r["metrics"]["accuracy"] for r in records
                if r["costs"]["size_bytes"] <= p.limit * (1 + 1e-9) and not r["metrics"]["stopped_early"]]
        assert p.val_accuracy == pytest.approx(max(fits))
    for method in ("uniform", "uniform+pruning"):
        found = [p.val_accuracy for p in result.front(method) if p.policy is not None]
        assert all(a >= b for a, b in zip(found, found[1:], strict=False))


def test_sensitivities_are_measured_once_for_the_whole_sweep(sweep):
    result, calls, _ = sweep
    assert calls == 1
    assert not result.sensitivity.cached and result.sensitivity.method == "fisher"
    assert len(result.levels) == 3


def test_mlflow_holds_one_parent_with_a_nested_run_per_budget(sweep):
    from mlflow import MlflowClient

    from automl.tracking.tracker import default_tracking_uri

    result, _, tmp_path = sweep
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path / "out"))
    ids = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(ids, "tags.`automl.kind` = 'pareto'")
    assert [p.info.status for p in parents] == ["FINISHED"]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"pareto.csv", "pareto.png", "pareto.md", "uniform_points.csv"} <= artifacts
    levels = client.search_runs(ids, f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(r.data.tags["budget"] for r in levels) == ["size<=0.12x", "size<=0.16x", "size<=0.25x"]
    assert {r.info.status for r in levels} == {"FINISHED"}
    trials = client.search_runs(ids, f"tags.`mlflow.parentRunId` = '{levels[0].info.run_id}'")
    assert len(trials) >= 3


def test_weight_shares_of_a_uniform_policy_put_only_the_pinned_layers_at_8_bits():
    from automl.cost import CostModel
    from automl.evaluation.evaluator import Problem
    from automl.pareto.points import weight_shares
    from tests.tasks import small_resnet

    task = small_resnet()
    problem = Problem.from_task(task, SpaceConfig(**SMALL_SPACE))
    cm = CostModel(problem.analysis, problem.space)
    shares = weight_shares(cm, problem.space.uniform(4, act_bits=8))
    pinned = [s.name for s in problem.space.layers if s.pinned]
    modules = dict(task.model.named_modules())
    total = sum(modules[s.name].weight.numel() for s in problem.space.layers)
    assert set(shares.shares) == {4, 8} and shares.pruned == pytest.approx(0.0)
    assert shares.shares[8] == pytest.approx(sum(modules[n].weight.numel() for n in pinned) / total)
    assert shares.dominant == 4 and 4 < shares.mean_bits < 8
    pruned = weight_shares(cm, problem.space.uniform(4, act_bits=8, sparsity=0.5))
    assert pruned.pruned > 0.3


def test_default_levels_are_geometric_from_a_quarter_to_a_sixty_fourth():
    texts = ParetoConfig(SearchConfig()).constraint_texts()
    values = [float(t.split("<=")[1].rstrip("x")) for t in texts]
    assert len(values) == 8 and values[0] == pytest.approx(0.25) and values[-1] == pytest.approx(1 / 64, rel=1e-3)
    ratios = [b / a for a, b in zip(values, values[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios), rel=2e-3)
    bitops = ParetoConfig(SearchConfig(), metric="bitops", levels=3).constraint_texts()
    assert bitops == ("bitops<=0.0625x", "bitops<=0.01562x", "bitops<=0.003906x")


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["--metric", "latency"], r"metric must be one of \['size', 'bitops'\], got 'latency'"),
        (["--budgets", "bitops<=0.1x"], r"constrains --metric size; 'bitops<=0.1x' constrains bitops"),
        (["--budgets", "0.1x", "--levels", "4"], r"either --budgets .* or --levels"),
        (["--levels", "1"], r"levels must be between 2 and 32, got 1"),
        (["--budgets", "lots"], r"cannot read the budget 'size<=lots'"),
        (["--budgets", "0.1x,0.1x"], r"repeat a level"),
        (["--evaluations", "0"], r"run.evaluations: must be greater than or equal to 1"),
        (["--searcher", "nope"], r"unknown searcher 'nope'"),
        (["--budgets", "0.0001x"], r"InfeasibleBudget: .*cannot be met"),
    ],
)
def test_bad_input_exits_2_with_one_paragraph_and_leaves_nothing_running(capsys, tmp_path, argv, pattern):
    import re

    out = tmp_path / "out"
    code = main(["pareto", "--task", "tests.tasks:tiny", "--searcher", "random", "--output", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and re.search(pattern, err), err
    assert len([line for line in err.strip().splitlines() if line.startswith("automl pareto: ")]) == 1, err
    if (out / "mlflow.db").exists():
        from mlflow import MlflowClient

        from automl.tracking.tracker import default_tracking_uri

        client = MlflowClient(tracking_uri=default_tracking_uri(out))
        ids = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(ids, "attributes.status = 'RUNNING'")


def test_a_bitops_sweep_prices_and_plots_bitops(tmp_path):
    from automl.pareto.sweep import run_pareto
    from tests.tasks import small_resnet

    config = ParetoConfig(small_config(tmp_path, evaluations=2, finetune_steps=0), ("0.05x", "0.01x"), "bitops")
    result = run_pareto(config, task=small_resnet(), quiet=True)
    rows = _rows(result)
    assert [r["budget"] for r in rows][::3] == ["bitops<=0.05x", "bitops<=0.01x"]
    for r in rows:
        if r["policy"] != "none fits":
            assert float(r["cost_MBitOps"]) <= float(r["limit_MBitOps"]) * (1 + 1e-6)
            assert r["finetune_steps"] == "0"
    # under a BitOps budget activations cost too: the uniform curve holds both activation widths at different costs
    with result.files["uniform_csv"].open() as fh:
        uniform = [u for u in csv.DictReader(fh) if u["weight_bits"] == "4" and u["sparsity"] == "0.0"]
    assert len({u["cost"] for u in uniform}) == len(uniform) > 1
    assert result.files["png"].stat().st_size > 20_000
