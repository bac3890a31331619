"""The sensitivity stage: a fragile layer is found and given bits; tables are cached and counted once."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import automl.runs.sensitivity_stage as stage
from automl.cost import CostModel
from automl.errors import ConfigError
from automl.evaluation.evaluator import EvalConfig, Evaluator, Problem
from automl.evaluation.task import Task
from automl.problem.budget import Budget
from automl.problem.ilp import solve_ilp
from automl.runs.config import SearchConfig
from automl.runs.runner import run_search
from search_spaces.space import SpaceConfig
from tests.tasks import bn_free_cnn

ROOT = Path(__file__).resolve().parent.parent
FRAGILE = "conv3"
NEIGHBOURS = ("conv2", "fc1")


def fragile_task() -> Task:
    """The trained BN-free CNN with ``conv3`` made fragile: it reads one always-zero input
    channel (``conv2``'s channel 0 is switched off) through weights 40x larger than the
    rest. Nothing downstream changes, but the outlier sets every output channel's
    quantization scale, so the layer's real weights round to zero at low bits."""
    base = bn_free_cnn()
    model = copy.deepcopy(base.model)
    with torch.no_grad():
        model.conv2.weight[0].zero_()
        model.conv2.bias[0] = -1.0  # ReLU(-1) = 0 for every input
        model.conv3.weight[:, 0] = 40 * model.conv3.weight.abs().max()
    return Task(model.eval(), base.sample_input, base.train_loader, base.calib_loader, base.val_loader,
                base.test_loader, name="fragile")


SPACE = SpaceConfig(weight_bits=(2, 3, 4, 8), act_bits=(8,), allow_pruning=False)


@pytest.mark.parametrize("method", ["measured", "fisher", "hessian"])
def test_a_fragile_layer_is_more_sensitive_and_gets_more_bits_from_the_ilp(method):
    problem = Problem.from_task(fragile_task(), SPACE)
    ev = Evaluator(problem, EvalConfig(bn_samples=0, early_stop=False, fidelity=1))
    sens = stage.sensitivity_stage(ev, problem.space, 1, method).sensitivities
    for bits in (2, 3, 4):
        fragile = sens.layer(FRAGILE).at(0.0, bits, 8)
        assert all(fragile > sens.layer(n).at(0.0, bits, 8) for n in NEIGHBOURS), (method, bits)
    cost_model = CostModel(problem.analysis, problem.space)
    bound = Budget.parse(["size<=0.12x"]).bind(cost_model)  # 8 bits everywhere does not fit
    policy = solve_ilp(problem.space, cost_model, bound, sens)
    bits = {n: lp.mean_bits for n, lp in policy}
    assert bits[FRAGILE] == 8 and all(bits[FRAGILE] > bits[n] for n in NEIGHBOURS), bits
    uninformed = solve_ilp(problem.space, cost_model, bound, None)  # every layer alike
    assert uninformed.as_dict()[FRAGILE].mean_bits < 8
    assert ev.evaluate(policy).kl < ev.evaluate(uninformed).kl / 10  # informed bits save the network


def test_tables_are_cached_by_model_and_method(tmp_path, monkeypatch):
    problem = Problem.from_task(fragile_task(), SPACE)
    ev = Evaluator(problem, EvalConfig(bn_samples=0, early_stop=False, fidelity=1))
    first = stage.sensitivity_stage(ev, problem.space, 1, "measured", tmp_path)
    assert first.spent == first.evaluations == ev.n_evaluations > 0 and not first.cached
    again = stage.sensitivity_stage(ev, problem.space, 1, "measured", tmp_path)
    assert again.cached and again.spent == 0 and again.evaluations == first.evaluations
    assert again.sensitivities == first.sensitivities and ev.n_evaluations == first.evaluations
    sens, spent = stage.sensitivities_for(ev, problem.space, 1, "hessian", tmp_path)
    assert spent > 0 and sens.source == "hessian"
    assert stage.sensitivities_for(ev, problem.space, 1, "hessian", tmp_path)[1] == 0
    with torch.no_grad():  # other weights: another key, measured again
        problem.task.model.conv2.weight.mul_(1.01)
    changed = Evaluator(Problem.from_task(problem.task, SPACE), EvalConfig(bn_samples=0, early_stop=False, fidelity=1))
    assert not stage.sensitivity_stage(changed, changed.problem.space, 1, "measured", tmp_path).cached
    assert len(json.loads((tmp_path / stage.CACHE_FILE).read_text())) == 3


@pytest.mark.slow
def test_a_resumed_search_reuses_its_sensitivities_and_counts_them_once(tmp_path, monkeypatch):
    from tests.tasks import tiny

    calls = []
    real = stage.measure_sensitivities
    monkeypatch.setattr(stage, "measure_sensitivities", lambda *a, **k: calls.append(1) or real(*a, **k))
    common = dict(task="tests.tasks:tiny", searcher={"name": "random", "sensitivity": "measured"}, finetune={"steps": 0},
                  space={"weight_bits": (0, 4, 8), "act_bits": (4, 8)})
    first = run_search(SearchConfig(**common, run={"evaluations": 2, "output": str(tmp_path)}), task=tiny(), quiet=True)
    assert calls == [1] and first.sensitivity_evaluations > 0
    run_dir = next((tmp_path / "runs").iterdir())
    resumed = run_search(SearchConfig(**common, run={"evaluations": 3, "resume": str(run_dir), "output": str(tmp_path)}),
                         task=tiny(), quiet=True)
    assert calls == [1]  # no second measuring pass
    assert resumed.n_evaluations == 3 and resumed.sensitivity_evaluations == first.sensitivity_evaluations
    assert json.loads((run_dir / "result.json").read_text())["sensitivity_evaluations"] == first.sensitivity_evaluations
    from mlflow import MlflowClient

    from automl.tracking.tracker import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    parent = client.get_run(json.loads((run_dir / "state.json").read_text())["parent_run_id"])
    assert parent.data.metrics["sensitivity_evaluations"] == first.sensitivity_evaluations
    history = client.get_metric_history(parent.info.run_id, "sensitivity_evaluations")
    assert {m.value for m in history} == {float(first.sensitivity_evaluations)}
    assert "sensitivities.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_a_bad_sensitivity_method_is_a_config_error():
    with pytest.raises(ConfigError, match="searcher.sensitivity: must be 'measured', 'fisher', 'hessian' or 'heuristic'"):
        SearchConfig(searcher={"sensitivity": "magic"})
    problem = Problem.from_task(fragile_task(), SPACE)
    with pytest.raises(ConfigError, match="searcher.sensitivity must be one of"):
        stage.sensitivity_stage(Evaluator(problem, EvalConfig(fidelity=1, bn_samples=0, early_stop=False)), problem.space, 1, "magic")


def test_cli_rejects_a_bad_sensitivity_method_with_exit_code_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "automl", "search", "--task", "tests.tasks:tiny", "--sensitivity", "magic",
         "--output", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "searcher.sensitivity: must be 'measured', 'fisher', 'hessian' or 'heuristic'" in done.stderr and "Traceback" not in done.stderr
