"""A search end to end: MLflow structure, resume after a crash, bring-your-own-model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automl.runs.config import SearchConfig
from automl.runs.runner import JOURNAL, read_journal, run_search
from automl.tracking.tracker import TRIAL_TAG, default_tracking_uri

ROOT = Path(__file__).resolve().parent.parent


def _children(output: Path, experiment: str = "automl-mpq"):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=default_tracking_uri(output))
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("automl.kind") == "search"]
    children = [r for r in runs if TRIAL_TAG in r.data.tags]
    return client, parents, children


def test_search_writes_the_expected_mlflow_structure(tmp_path):
    from tests.tasks import tiny

    cfg = SearchConfig(task="tests.tasks:tiny", searcher={"name": "random"}, run={"evaluations": 6, "output": str(tmp_path)}, finetune={"steps": 2})
    result = run_search(cfg, task=tiny(), quiet=True)
    assert result.n_evaluations == 6
    client, parents, children = _children(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 6
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(int(c.data.tags[TRIAL_TAG]) for c in children) == list(range(6))
    for c in children:
        assert {"val_accuracy", "kl", "size_bytes", "size_kB", "bitops_M", "feasible", "repaired"} <= set(c.data.metrics)
        assert c.data.metrics["size_kB"] == pytest.approx(c.data.metrics["size_bytes"] / 1000, rel=1e-5)
        assert c.data.params["searcher"] == "random"
    best = [c for c in children if c.data.tags.get("best") == "true"]
    for c in children:
        expected = {"policy.json"} | ({"layers.md", "layers.html", "layers.json", "layers.png"} if c in best else set())
        assert {a.path for a in client.list_artifacts(c.info.run_id)} == expected
    assert len(best) == 1 and best[0].data.metrics["feasible"] == 1.0
    assert best[0].data.metrics["val_accuracy"] == pytest.approx(result.best.accuracy, rel=1e-5)
    assert "test_accuracy" in best[0].data.metrics
    parent_files = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"pareto_front.png", "pareto_front.csv", "best_policies.md", "best_policies_layers.png", "best_model.ampq", "export_report.json",
            "search_space.json", "budget.json", "config.json"} <= parent_files
    assert "float_val_accuracy" in parents[0].data.metrics
    # What the UI shows: the ML view, the parent linking its best child, the child's per-layer table.
    from automl.tracking.report import best_table
    from automl.tracking.ui import EXPERIMENT_KIND_TAG, NOTE_TAG, VIEW_TAG, run_path

    exp = client.get_experiment_by_name("automl-mpq")
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development" and VIEW_TAG in exp.tags
    assert run_path(exp.experiment_id, best[0].info.run_id) in parents[0].data.tags[NOTE_TAG]
    assert "| layer | W bits per channel group | A bits | pruned channels |" in best[0].data.tags[NOTE_TAG]
    assert parents[0].data.metrics["budget_size_kB"] == pytest.approx(dict(result.limits)["size"] / 1000, rel=1e-5)
    table = best_table(default_tracking_uri(tmp_path), "automl-mpq")
    assert f"budget size<=0.125x = size <= {dict(result.limits)['size'] / 1000:.4g} kB" in table
    row = next(line for line in table.splitlines() if best[0].info.run_id in line)
    assert f"| {result.best.number} | {result.best.accuracy:.4f} | {best[0].data.metrics['test_accuracy']:.4f} |" in row


def _wait_for_records(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(read_journal(path)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"search ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("search made no progress")


@pytest.mark.parametrize("searcher", ["random", "tpe"])
def test_a_killed_search_resumes_without_losing_or_repeating_a_trial(tmp_path, searcher):
    n = 14
    cmd = [sys.executable, "-m", "automl", "search", "--task", "tests.tasks:tiny", "--searcher", searcher,
           "--evaluations", str(n), "--output", str(tmp_path), "--finetune-steps", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run_dirs: list[Path] = []
    deadline = time.time() + 120
    while not run_dirs and time.time() < deadline:
        run_dirs = list((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []
        time.sleep(0.05)
    run_dir = run_dirs[0]
    _wait_for_records(run_dir / JOURNAL, 4, proc)
    proc.send_signal(signal.SIGKILL)  # a crash: no cleanup at all
    proc.wait()
    before = read_journal(run_dir / JOURNAL)
    assert 4 <= len(before) < n
    done = subprocess.run([*cmd, "--resume", str(run_dir)], cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    after = {r.number: r for r in read_journal(run_dir / JOURNAL)}
    # Optuna numbers a trial killed mid-evaluation and never reuses the number: gaps are allowed,
    # duplicates and losses are not.
    distinct = [r for r in after.values() if not r.cache_hit]  # a repeated proposal costs no budget
    assert len(distinct) == n and len({r.policy.key() for r in distinct}) == n
    for old in before:  # nothing evaluated before the crash was lost or changed
        assert after[old.number].policy == old.policy
    result = json.loads((run_dir / "result.json").read_text())
    assert result["n_evaluations"] == n
    _, parents, children = _children(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    numbers = sorted(int(c.data.tags[TRIAL_TAG]) for c in children if c.info.status == "FINISHED")
    assert numbers == sorted(after)


def test_bring_your_own_model_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    from automl.runs.runner import search
    from examples.byom_task import make_task

    task = make_task(epochs=1)
    result = search(task, budget="size<=0.25x", searcher="random", quiet=True, run={"evaluations": 4, "output": str(tmp_path)}, finetune={"steps": 2})
    assert result.n_evaluations == 4 and result.best is not None
    assert result.best.costs.size_bytes <= dict(result.limits)["size"]


def test_a_failing_build_opens_no_store_and_leaves_nothing(tmp_path, monkeypatch):
    """Nothing is written until the problem (task, analysis, cost model, budget) is built: when the
    build fails, the error is the build's, no MLflow thread is left and no file was made."""
    import threading

    from automl.errors import ConfigError
    from automl.runs import runner
    from automl.runs.resume import RunPlan

    def broken(*args, **kwargs):
        raise ConfigError("task build failed")

    monkeypatch.setattr(runner, "_build_problem", broken)
    cfg = SearchConfig(task="tests.tasks:tiny", searcher={"name": "random"}, run={"evaluations": 2, "output": str(tmp_path)})
    with pytest.raises(ConfigError, match="task build failed"):
        runner.build_session(RunPlan(cfg, tmp_path / "run"))
    deadline = time.time() + 60
    while any(t.name == "mlflow-logger" or t.name.startswith("mlflow-open") for t in threading.enumerate()):
        assert time.time() < deadline, [t.name for t in threading.enumerate()]
        time.sleep(0.1)
    assert list(tmp_path.iterdir()) == []  # no run directory, no mlflow.db
