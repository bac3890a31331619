"""Chaos: ``kill -9`` at random moments, then ``--resume``; nothing lost, nothing twice (slow).

Each run makes the search SIGKILL itself at the Nth pass of one named point of
:mod:`automl.faults` (an evaluation, a cache write, half a journal line, an Optuna commit, a
child run half written on the MLflow thread), picked at random. The killed parent run must
be closed KILLED (never left RUNNING), and the resumed run must hold every policy exactly
once in the journal, the Optuna study and MLflow's child runs. ``AUTOML_CHAOS_RUNS`` and
``AUTOML_CHAOS_SEED`` change the number of runs (20) and the draw of kill points.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automl.faults import ENV
from automl.runs.resume import JOURNAL, STATE, read_journal

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--task", "tests.tasks:tiny", "--finetune-steps", "0", "--sensitivity", "heuristic"]
EVALUATIONS = 6
POINTS = {
    "random": ("evaluation", "cache-write", "journal-write", "mlflow-write"),
    "tpe": ("evaluation", "cache-write", "journal-write", "mlflow-write", "optuna-commit"),
}


def _cli(*argv: str, fault: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop(ENV, None)
    if fault:
        env[ENV] = fault
    return subprocess.run([sys.executable, "-m", "automl", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def _check(run_dir: Path, output: Path, searcher: str) -> None:
    """Journal, study and MLflow agree: EVALUATIONS distinct policies, none lost, none twice."""
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from automl.tracking.tracker import default_tracking_uri

    records = read_journal(run_dir / JOURNAL)
    lines = [x for x in (run_dir / JOURNAL).read_text().splitlines() if x.strip()]
    assert len(lines) == len(records), "a trial journaled twice (or a torn line left in the middle)"
    counted = [r for r in records if not r.cache_hit]
    assert len(counted) == EVALUATIONS
    assert len({r.policy.key() for r in counted}) == EVALUATIONS  # no policy evaluated twice
    numbers = [r.number for r in records]
    if searcher == "tpe":
        study = optuna.load_study(study_name=f"automl-{run_dir.name}", storage=f"sqlite:///{run_dir / 'optuna.db'}")
        done = sorted(t.number for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
        assert done == numbers  # every told trial is journaled and the other way round
        assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    else:
        assert numbers == list(range(len(numbers)))
    client = MlflowClient(tracking_uri=default_tracking_uri(output))
    parent_id = json.loads((run_dir / STATE).read_text())["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000)
    finished = sorted(int(r.data.tags["automl.trial"]) for r in kids if r.info.status == "FINISHED")
    assert finished == numbers  # one finished child per trial
    assert all(r.info.status != "RUNNING" for r in kids)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_loses_and_duplicates_nothing(tmp_path):
    from mlflow import MlflowClient

    from automl.runs.lifecycle import close_if_stale
    from automl.tracking.tracker import default_tracking_uri

    rng = random.Random(int(os.environ.get("AUTOML_CHAOS_SEED", "13")))
    n_runs = int(os.environ.get("AUTOML_CHAOS_RUNS", "20"))
    output = tmp_path / "out"  # one MLflow store for every run, as a user's would be
    tried: list[str] = []
    start = time.perf_counter()
    for i in range(n_runs):
        searcher = "tpe" if i % 2 else "random"
        fault = f"{rng.choice(POINTS[searcher])}:{rng.randint(1, EVALUATIONS - 1)}"
        before = set((output / "runs").glob("*")) if (output / "runs").exists() else set()
        killed = _cli("search", *TINY, "--searcher", searcher, "--seed", str(i), "--evaluations", str(EVALUATIONS),
                      "--output", str(output), fault=fault)
        assert killed.returncode == -signal.SIGKILL, (fault, killed.stderr[-3000:])
        (run_dir,) = set((output / "runs").glob("*")) - before
        parent_id = json.loads((run_dir / STATE).read_text())["parent_run_id"]
        client = MlflowClient(tracking_uri=default_tracking_uri(output))
        assert client.get_run(parent_id).info.status == "RUNNING"  # kill -9 ran no clean-up
        assert close_if_stale(run_dir) and client.get_run(parent_id).info.status == "KILLED", fault
        resumed = _cli("search", "--resume", str(run_dir))
        assert resumed.returncode == 0, (fault, resumed.stderr[-3000:])
        _check(run_dir, output, searcher)
        tried.append(f"{searcher}@{fault}")
    print(f"\nkill points tried: {', '.join(tried)}")
    print(f"RESULT chaos_runs={n_runs} lost=0 duplicated=0 left_running=0 seconds={time.perf_counter() - start:.0f}")
