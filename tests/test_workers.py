"""``automl search --workers N`` and ``automl worker``: one study, one journal, one MLflow parent."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from automl.cli import main
from automl.runs.workers import WORKER_ATTR, fail_dead_trials, process_space, tag_alive, worker_tag
from tests.test_postgres_tracking import postgres_urls  # noqa: F401, F811 - the PostgreSQL fixture

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--task", "tests.tasks:tiny", "--finetune-steps", "0", "--sensitivity", "heuristic"]


def _study(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=f"automl-{run_dir.name}", storage=f"sqlite:///{run_dir / 'optuna.db'}")


def _children(output: Path) -> tuple[list[str], list[str]]:
    """(parent run ids, parent ids of child runs) in the run store under ``output``."""
    from mlflow import MlflowClient

    from automl.tracking.tracker import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(output))
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, max_results=1000)
    parents = [r.info.run_id for r in runs if r.data.tags.get("automl.kind") == "search"]
    kids = [r.data.tags["mlflow.parentRunId"] for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, kids


def _journal(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines() if line.strip()]


def _check_complete(output: Path, n: int) -> Path:
    """One run whose journal, study and MLflow agree: ``n`` distinct policies, none twice, none lost."""
    (run_dir,) = list((output / "runs").glob("*"))
    journal = _journal(run_dir)
    counted = [r for r in journal if not r.get("cache_hit")]
    assert len(counted) == n
    assert len({json.dumps(r["policy"], sort_keys=True) for r in counted}) == n  # evaluated once each
    assert len({r["number"] for r in journal}) == len(journal)
    study = _study(run_dir)
    done = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert {t.number for t in done} == {r["number"] for r in journal}  # nothing lost from the journal
    parents, kids = _children(output)
    assert len(parents) == 1 and kids == [parents[0]] * len(journal)
    return run_dir


def test_workers_need_an_optuna_searcher(capsys, tmp_path):
    code = main(["search", *TINY, "--searcher", "random", "--workers", "2", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "needs a searcher that keeps its state in an Optuna study" in err and "tpe" in err
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_workers_need_a_shared_storage(capsys, tmp_path):
    code = main(["search", *TINY, "--searcher", "tpe", "--workers", "2", "--storage", ":memory:", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "storage every worker process can open" in err


def test_worker_needs_join_or_storage_and_study(capsys, tmp_path):
    for argv in (["worker"], ["worker", "--storage", "sqlite:///x.db"], ["worker", "--join", str(tmp_path)]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
    assert "config.json" in err


def test_a_trial_of_a_killed_worker_is_failed_with_a_reason_and_requeued(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tag = {"host": socket.gethostname(), "space": process_space(), "pid": victim.pid, "start": None}
    dead = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    dead.set_user_attr(WORKER_ATTR, tag)
    alive = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    alive.set_user_attr(WORKER_ATTR, worker_tag())
    assert fail_dead_trials(study, storage) == []  # both workers still run
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert tag_alive(tag) is False
    assert fail_dead_trials(study, storage) == [dead.number]
    assert fail_dead_trials(study, storage) == []  # failed once, re-queued once
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    assert "died during the trial" in trials[dead.number].user_attrs["fail_reason"]
    assert trials[alive.number].state == TrialState.RUNNING
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.user_attrs["retry_of"] == dead.number
    nxt = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    assert nxt.params == trials[dead.number].params  # the next worker evaluates the lost policy


def test_a_worker_in_another_container_with_the_same_hostname_is_not_judged_by_its_pid():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = {"host": socket.gethostname(), "space": process_space(), "pid": gone.pid, "start": None}
    assert process_space() and tag_alive(here) is False
    elsewhere = {**here, "space": "another-boot-id:4026531836"}  # same hostname, another process list
    assert tag_alive(elsewhere) is None  # left to the heartbeat, never failed by a pid lookup here


@pytest.mark.slow
def test_two_workers_share_one_study_journal_and_parent_run(tmp_path):
    n = 8
    cmd = [sys.executable, "-m", "automl", "search", *TINY, "--searcher", "tpe", "--evaluations", str(n),
           "--workers", "2", "--output", str(tmp_path), "--fidelity", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = _check_complete(tmp_path, n)
    pids = {t.user_attrs[WORKER_ATTR]["pid"] for t in _study(run_dir).get_trials() if WORKER_ATTR in t.user_attrs}
    assert len(pids) == 2  # both workers evaluated


@pytest.mark.slow
def test_kill_9_of_a_worker_mid_trial_loses_nothing_and_repeats_nothing(tmp_path):
    n = 24  # enough trials (~0.1 s each) that the poll below sees one running after two are done
    cmd = [sys.executable, "-m", "automl", "search", *TINY, "--searcher", "tpe", "--evaluations", str(n),
           "--workers", "2", "--output", str(tmp_path), "--fidelity", "3"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 400
    while killed is None and time.time() < deadline and proc.poll() is None:
        # The parent's ready marker: the study exists (opening a half-made SQLite file races its creation).
        ready = list(tmp_path.glob("runs/*/workers/ready"))
        if ready:
            try:
                study = _study(ready[0].parent.parent)
                # a trial that started < 0.5 s ago (they take ~1.5 s): the kill lands before it completes
                running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                           if WORKER_ATTR in t.user_attrs and time.time() - t.datetime_start.timestamp() < 0.5]
                done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            except (KeyError, Exception):  # noqa: BLE001 - the study is not created yet
                running, done = [], []
            if running and len(done) >= 2:
                killed = running[0]
                os.kill(killed.user_attrs[WORKER_ATTR]["pid"], signal.SIGKILL)
        time.sleep(0.05)
    if killed is None:
        proc.kill()
        pytest.fail(f"no trial was running to kill (search exit {proc.wait()}): {proc.stderr.read()[-3000:]}")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    run_dir = _check_complete(tmp_path, n)
    trials = _study(run_dir).get_trials()
    victim = trials[killed.number]
    assert victim.state == TrialState.FAIL and "died during the trial" in victim.user_attrs["fail_reason"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert killed.number not in {r["number"] for r in _journal(run_dir)}


def test_worker_on_another_host_needs_a_study_started_by_a_search(capsys, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    code = main(["worker", "--storage", url, "--study", "missing"])
    err = capsys.readouterr().err
    assert code == 2 and "no study 'missing'" in err
    optuna.create_study(storage=url, study_name="foreign")
    code = main(["worker", "--storage", url, "--study", "foreign"])
    err = capsys.readouterr().err
    assert code == 2 and "holds no automl-mpq search configuration" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_from_another_directory_joins_through_postgres(tmp_path, postgres_urls):  # noqa: F811
    """Two hosts, played by two processes in separate working directories: the search (one
    local worker) and ``automl worker --storage --study`` share a PostgreSQL study; the
    parent logs both workers' trials into one MLflow parent run (PostgreSQL backend)."""
    mlflow_url, optuna_url = postgres_urls
    n = 10
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    host_a.mkdir()
    host_b.mkdir()
    cmd = [sys.executable, "-m", "automl", "search", *TINY, "--searcher", "tpe", "--evaluations", str(n),
           "--workers", "2", "--output", str(host_a / "out"), "--fidelity", "3", "--storage", optuna_url,
           "--tracking-uri", mlflow_url]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the test task (tests.tasks) from any working directory
    proc = subprocess.Popen(cmd, cwd=host_a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    runs: list[Path] = []
    while not runs and time.time() < deadline and proc.poll() is None:
        runs = list((host_a / "out" / "runs").glob("*")) if (host_a / "out" / "runs").exists() else []
        time.sleep(0.2)
    if not runs:
        proc.kill()
        pytest.fail(f"the search made no run directory (exit {proc.wait()}): {proc.stderr.read()[-3000:]}")
    study_name = f"automl-{runs[0].name}"
    for _ in range(600):  # the parent stores its configuration in the study before starting workers
        try:
            if optuna.load_study(study_name=study_name, storage=optuna_url).user_attrs.get("automl_config"):
                break
        except KeyError:
            pass
        time.sleep(0.5)
    joined = subprocess.run([sys.executable, "-m", "automl", "worker", "--storage", optuna_url, "--study", study_name,
                             "--output", str(host_b / "out")], cwd=host_b, capture_output=True, text=True, timeout=600,
                            env=env)
    assert joined.returncode == 0, joined.stderr[-3000:]
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name=study_name, storage=optuna_url)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    journal = _journal(runs[0])
    counted = [r for r in journal if not r.get("cache_hit")]
    assert len(counted) == n and len({json.dumps(r["policy"], sort_keys=True) for r in counted}) == n
    assert {t.number for t in done} == {r["number"] for r in journal}
    pids = {t.user_attrs[WORKER_ATTR]["pid"] for t in done}
    assert len(pids) >= 2
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_url)
    ids = [e.experiment_id for e in client.search_experiments()]
    all_runs = client.search_runs(ids, max_results=1000)
    parents = [r.info.run_id for r in all_runs if r.data.tags.get("automl.kind") == "search"]
    kids = [r.data.tags["mlflow.parentRunId"] for r in all_runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and kids == [parents[0]] * len(journal)


def test_the_loser_of_a_sqlite_schema_race_retries(monkeypatch, tmp_path):
    """Two processes creating the schema of one new SQLite file at once (seen: the search and
    a script polling its study): the loser's alembic insert fails; it retries and opens."""
    import agents.storage as storage_mod

    real, calls = storage_mod.BatchedRDBStorage, []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num")
        return real(url, **kwargs)

    monkeypatch.setattr(storage_mod, "BatchedRDBStorage", racing)
    monkeypatch.setattr("time.sleep", lambda s: None)
    assert storage_mod.open_storage(f"sqlite:///{tmp_path / 'race.db'}") is not None and len(calls) == 2


def test_a_trial_without_heartbeat_is_failed_and_requeued_once_per_retry(tmp_path):
    from agents.storage import MAX_RETRIES, fail_stale, heartbeat, open_storage, quiet_optuna

    storage = open_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="hb")
    dist = {"x": optuna.distributions.IntDistribution(0, 9)}
    for attempt in range(MAX_RETRIES + 1):
        trial = study.ask(dist)
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("hb"), trial.number)
        with quiet_optuna(), heartbeat(storage, trial_id):  # one beat, then the "worker" goes silent
            pass
        time.sleep(2.2)
        fail_stale(study, storage)
        assert study.get_trials()[trial.number].state == TrialState.FAIL
        waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
        if attempt < MAX_RETRIES:
            (retry,) = waiting
            assert retry.user_attrs["retry_of"] == trial.number and "no heartbeat" in retry.user_attrs["retry_reason"]
            assert "for 1 s" in retry.user_attrs["retry_reason"]  # the storage's own grace period
            assert retry.system_attrs["fixed_params"] == study.get_trials()[trial.number].params
        else:
            assert waiting == []  # a policy that keeps killing its workers is not queued forever


def test_a_joining_worker_waits_for_the_ready_marker_and_gives_up_when_the_owner_is_gone(tmp_path):
    from automl.errors import ConfigError
    from automl.runs.lifecycle import write_owner
    from automl.runs.workers import READY, wait_ready

    run_dir = tmp_path / "run"
    (run_dir / "workers").mkdir(parents=True)
    with pytest.raises(ConfigError, match="never published its study"):
        wait_ready(run_dir, poll=0.01)  # no owner file: nobody will publish it
    write_owner(run_dir)  # this process owns it and is alive: the worker waits ...
    import threading

    threading.Timer(0.3, lambda: (run_dir / "workers" / READY).write_text("automl-run\n")).start()
    start = time.monotonic()
    wait_ready(run_dir, poll=0.01)  # ... until the marker appears
    assert time.monotonic() - start >= 0.25
