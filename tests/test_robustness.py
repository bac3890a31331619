"""Failures a search survives or reports (issue 13): MLflow write errors, a foreign or corrupted
Optuna database, an unwritable output, a full disk, a tracking server that goes away, and a
random search that gives the same answer across a kill -9 and a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automl.resume import JOURNAL, STATE, read_journal
from automl.tracking import FAILURES_FILE, FAILURES_TAG, MlflowTracker, default_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--task", "tests.tasks:tiny", "--finetune-steps", "0", "--sensitivity", "heuristic"]


class Flaky:
    """Wraps an MlflowClient: the calls named in ``fail`` raise their first ``times`` times."""

    def __init__(self, inner, fail: dict[str, int], when=None) -> None:  # noqa: ANN001
        self.inner, self.left, self.when = inner, dict(fail), when
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str):  # noqa: ANN204
        fn = getattr(self.inner, name)

        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.left.get(name, 0) > 0 and (self.when is None or self.when(*args, **kwargs)):
                self.left[name] -= 1
                raise ConnectionError(f"injected failure of {name}")
            return fn(*args, **kwargs)

        return call


def _tracker(tmp_path: Path, fail: dict[str, int]) -> MlflowTracker:
    tracker = MlflowTracker(default_tracking_uri(tmp_path), "exp", failure_log=tmp_path / FAILURES_FILE)
    tracker.client.backoff = 0.01
    tracker.client.inner = Flaky(tracker.client.inner, fail)
    tracker.start_parent("p", {"a": 1}, {"automl.kind": "search"})
    return tracker


def _child_statuses(tracker: MlflowTracker) -> list[str]:
    runs = tracker.client.inner.inner.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{tracker.parent_id}'")
    return [r.info.status for r in runs]


def test_mlflow_writes_are_retried_until_they_succeed(tmp_path):
    tracker = _tracker(tmp_path, {"log_batch": 2, "log_text": 3})  # attempts: 4
    tracker.log_trial(0, {"val_accuracy": 0.5}, {"p": 1}, {"t": "x"}, "{}")
    tracker.flush()
    assert tracker.failures == [] and tracker.client.inner.calls["log_batch"] == 4  # parent's 1 + child's 3
    assert _child_statuses(tracker) == ["FINISHED"] and tracker.logged_trials().keys() == {0}
    tracker.finish_parent()
    tracker.close()
    assert not (tmp_path / FAILURES_FILE).exists()
    assert FAILURES_TAG not in tracker.client.get_run(tracker.parent_id).data.tags


def test_mlflow_writes_that_keep_failing_are_counted_logged_and_tagged(tmp_path):
    tracker = _tracker(tmp_path, {"log_text": 4})  # every try of trial 0's policy artifact
    tracker.log_trial(0, {"val_accuracy": 0.5}, {}, {}, "{}")
    tracker.log_trial(1, {"val_accuracy": 0.6}, {}, {}, "{}")
    tracker.flush()
    assert [f["what"] for f in tracker.failures] == ["trial 0"] and "injected failure of log_text" in tracker.failures[0]["error"]
    assert "1 write(s) failed after retries" in tracker.failure_summary() and FAILURES_FILE in tracker.failure_summary()
    lines = (tmp_path / FAILURES_FILE).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["what"] == "trial 0"
    tracker.finish_parent("FINISHED")
    tracker.close()
    parent = tracker.client.get_run(tracker.parent_id)
    assert parent.data.tags[FAILURES_TAG] == "1" and parent.info.status == "FINISHED"
    assert sorted(_child_statuses(tracker)) == ["FAILED", "FINISHED"]  # the failed child is not left RUNNING
    assert tracker.logged_trials().keys() == {1}  # a resume logs trial 0 again


def test_a_search_reports_failed_writes_in_its_summary_tags_and_run_dir(tmp_path, monkeypatch, capsys):
    """Through the runner: trial 1's child run cannot be written; the search still finishes."""
    from mlflow import MlflowClient

    from automl import tracking
    from automl.config import SearchConfig
    from automl.runner import run_search
    from tests.tasks import tiny

    monkeypatch.setattr(tracking, "BACKOFF", 0.01)
    real = MlflowClient.create_run

    def create_run(self, experiment_id, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if kwargs.get("run_name") == "trial-0001":
            raise ConnectionError("injected: the store went away")
        return real(self, experiment_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_run", create_run)
    cfg = SearchConfig(task="tests.tasks:tiny", searcher="random", evaluations=3, output=str(tmp_path), finetune_steps=0,
                       sensitivity_method="heuristic")
    result = run_search(cfg, task=tiny())
    out = capsys.readouterr().out
    assert result.n_evaluations == 3
    assert "MLflow: 1 write(s) failed after retries" in out and "trial 1: MLflow store" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len(read_journal(run_dir / JOURNAL)) >= 3
    assert [json.loads(x)["what"] for x in (run_dir / FAILURES_FILE).read_text().splitlines()] == ["trial 1"]
    parent = MlflowClient(default_tracking_uri(tmp_path)).get_run(json.loads((run_dir / STATE).read_text())["parent_run_id"])
    assert parent.data.tags[FAILURES_TAG] == "1" and parent.info.status == "FINISHED"
