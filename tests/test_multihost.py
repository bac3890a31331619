"""Issue 13's multi-host acceptance test: two hosts, one PostgreSQL server, one MLflow server.

"Host A" runs ``automl search --workers 2`` and "host B" runs ``automl worker --storage
--study``, each in its own working directory and (as root, where ``ip netns add`` works)
its own network namespace, so each reaches the servers only over its veth link, at the
address a real cluster's hosts would use (tests/netns_support.py). PostgreSQL (Debian's
binaries, tests/postgres_support.py) holds the Optuna study and the MLflow backend store;
a real ``mlflow server`` (tests/mlflow_server_support.py) is the tracking URI and stores
the artifacts. Without namespaces the two hosts are two processes on 127.0.0.1, and the
test says so (a warning and a line on stderr) rather than skipping.

Checked: every evaluation a distinct policy (0 duplicated) and every completed trial in
the journal (0 lost); trials from host A's workers and from host B's worker; PostgreSQL
saw both hosts' addresses; on the MLflow server one parent run of kind search, every trial
a child of it, no run left RUNNING, and the artifacts stored by the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from automl.runs.workers import WORKER_ATTR
from tests.mlflow_server_support import MlflowServer, start_mlflow_server
from tests.netns_support import Hosts, create_hosts
from tests.postgres_support import PostgresServer, postgres_bin, start_postgres

TINY = ["--task", "tests.tasks:tiny", "--finetune-steps", "0", "--sensitivity", "heuristic"]
EVALUATIONS = 12


@dataclass
class Cluster:
    hosts: Hosts | None  # None: no namespaces, both "hosts" on 127.0.0.1
    postgres: PostgresServer
    mlflow: MlflowServer
    server_ip: str
    optuna_url: str  # as the hosts reach it
    local_optuna_url: str  # as the test process reaches it
    artifacts: Path

    def prefix(self, index: int) -> list[str]:
        return self.hosts.prefix(index) if self.hosts else []


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    pytest.importorskip("psycopg", reason="pip install 'automl-mpq[postgres]' (psycopg 3)")
    if postgres_bin() is None:
        why = "no PostgreSQL binaries: apt-get install -y postgresql"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)  # a developer machine without PostgreSQL; under CI (above) it fails instead
    import psycopg

    hosts: Hosts | None = None
    postgres = mlflow = None
    try:
        try:
            hosts = create_hosts(2)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            note = (f"network namespaces unavailable ({exc}); the two hosts run as separate processes "
                    "on 127.0.0.1 instead")
            print(f"test_multihost: {note}", file=sys.stderr)
            warnings.warn(note, stacklevel=1)
        server_ip = hosts.server_ip if hosts else "127.0.0.1"
        postgres = start_postgres(listen=[server_ip] if hosts else [], trust_networks=[hosts.network] if hosts else [],
                                  settings={"log_connections": "on"})
        names = {kind: f"automl_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "optuna")}
        with psycopg.connect(postgres.url, autocommit=True) as conn:  # MLflow and Optuna each need their own schema
            for name in names.values():
                conn.execute(f'CREATE DATABASE "{name}"')
        local_root = postgres.url.rsplit("/", 1)[0]
        port = local_root.rsplit(":", 1)[1]
        artifacts = tmp_path / "server" / "mlartifacts"
        mlflow = start_mlflow_server(f"{local_root}/{names['mlflow']}", artifacts, host=server_ip)
        yield Cluster(hosts, postgres, mlflow, server_ip, f"postgresql://postgres@{server_ip}:{port}/{names['optuna']}",
                      f"{local_root}/{names['optuna']}", artifacts)
    finally:
        if mlflow is not None:
            mlflow.stop()
        if postgres is not None:
            postgres.remove()
        if hosts is not None:
            hosts.remove()


def _stop(proc: subprocess.Popen) -> None:
    """End a test process that is still running (a failed test) with its workers: its process group."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _journal(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.postgres
def test_two_hosts_share_one_study_and_one_mlflow_parent(tmp_path, cluster):
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    host_a.mkdir()
    host_b.mkdir()
    # Each host must be able to import the task (a user installs their package there); here: the checkout.
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    search = [*cluster.prefix(0), sys.executable, "-m", "automl", "search", *TINY, "--searcher", "tpe",
              "--evaluations", str(EVALUATIONS), "--workers", "2", "--threads", "1", "--output", str(host_a / "out"),
              "--fidelity", "3", "--storage", cluster.optuna_url, "--tracking-uri", cluster.mlflow.url]
    proc_a = subprocess.Popen(search, cwd=host_a, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    proc_b: subprocess.Popen | None = None
    try:
        runs_root = host_a / "out" / "runs"
        deadline = time.monotonic() + 240
        study_name = None
        while study_name is None and time.monotonic() < deadline and proc_a.poll() is None:
            runs = list(runs_root.glob("*")) if runs_root.exists() else []
            if runs:  # the parent stores its configuration in the study before it starts its workers
                try:
                    study = optuna.load_study(study_name=f"automl-{runs[0].name}", storage=cluster.local_optuna_url)
                    if study.user_attrs.get("automl_config"):
                        study_name = study.study_name
                except KeyError:
                    pass
            time.sleep(0.2)
        assert study_name, f"the search started no shared study: {proc_a.stderr.read()[-3000:] if proc_a.poll() else ''}"
        run_dir = runs_root / study_name.removeprefix("automl-")
        proc_b = subprocess.Popen([*cluster.prefix(1), sys.executable, "-m", "automl", "worker", "--storage",
                                   cluster.optuna_url, "--study", study_name, "--output", str(host_b / "out"),
                                   "--threads", "1"],
                                  cwd=host_b, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        out_b, err_b = proc_b.communicate(timeout=300)
        assert proc_b.returncode == 0, err_b[-3000:]
        _, err_a = proc_a.communicate(timeout=300)
        assert proc_a.returncode == 0, err_a[-3000:]
    finally:
        _stop(proc_a)
        if proc_b is not None:
            _stop(proc_b)

    # the study and the journal: 0 duplicated, 0 lost
    study = optuna.load_study(study_name=study_name, storage=cluster.local_optuna_url)
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    journal = _journal(run_dir)
    counted = [r for r in journal if not r.get("cache_hit")]
    assert len(counted) == EVALUATIONS
    assert len({json.dumps(r["policy"], sort_keys=True) for r in counted}) == EVALUATIONS  # none evaluated twice
    assert len({r["number"] for r in journal}) == len(journal)
    assert {t.number for t in done} == {r["number"] for r in journal}  # none lost
    # both hosts evaluated: host B's worker reports its pid; host A's workers are the others
    (pid_b,) = (int(m) for m in re.findall(r"worker (\d+): \d+ distinct evaluations", out_b))
    pids = {t.user_attrs[WORKER_ATTR]["pid"] for t in done}
    assert pid_b in pids and len(pids - {pid_b}) >= 1, (pid_b, pids)
    if cluster.hosts:  # each host reached PostgreSQL from its own namespace's address
        log = cluster.postgres.log.read_text(errors="replace")
        for ip in cluster.hosts.host_ips:
            assert f"host={ip} " in log, f"PostgreSQL saw no connection from {ip}"

    # the MLflow server: one parent, every trial its child, nothing left RUNNING
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cluster.mlflow.url)
    experiments = client.search_experiments()
    all_runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("automl.kind") == "search"]
    assert len(parents) == 1
    parent = parents[0].info.run_id
    kids = [r for r in all_runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.data.tags["mlflow.parentRunId"] for r in kids] == [parent] * len(journal)
    assert sorted(int(r.data.tags["automl.trial"]) for r in kids) == sorted(r["number"] for r in journal)
    assert len(all_runs) == len(kids) + 1
    assert {r.info.status for r in all_runs} == {"FINISHED"}
    # artifacts went through the server into its artifact root, not into host A's directory
    assert all(e.artifact_location.startswith("mlflow-artifacts:") for e in experiments if e.name != "Default")
    assert list(cluster.artifacts.rglob("policy.json")), "no trial's policy.json in the server's artifact root"
