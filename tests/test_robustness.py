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

from automl.runs.resume import JOURNAL, STATE, read_journal
from automl.tracking.tracker import FAILURES_FILE, FAILURES_TAG, MlflowTracker, default_tracking_uri

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

    from automl.runs.config import SearchConfig
    from automl.runs.runner import run_search
    from automl.tracking import tracker as tracking
    from tests.tasks import tiny

    monkeypatch.setattr(tracking, "BACKOFF", 0.01)
    real = MlflowClient.create_run

    def create_run(self, experiment_id, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if kwargs.get("run_name") == "trial-0001":
            raise ConnectionError("injected: the store went away")
        return real(self, experiment_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_run", create_run)
    cfg = SearchConfig(task="tests.tasks:tiny", searcher={"name": "random", "sensitivity": "heuristic"}, run={"evaluations": 3, "output": str(tmp_path)}, finetune={"steps": 0})
    result = run_search(cfg, task=tiny())
    out = capsys.readouterr().out
    assert result.n_evaluations == 3
    assert "MLflow: 1 write(s) failed after retries" in out and "trial 1: MLflow store" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len(read_journal(run_dir / JOURNAL)) >= 3
    assert [json.loads(x)["what"] for x in (run_dir / FAILURES_FILE).read_text().splitlines()] == ["trial 1"]
    parent = MlflowClient(default_tracking_uri(tmp_path)).get_run(json.loads((run_dir / STATE).read_text())["parent_run_id"])
    assert parent.data.tags[FAILURES_TAG] == "1" and parent.info.status == "FINISHED"


# bad stores and full disks, through the command line ------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "automl", *argv], cwd=ROOT, capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


def _exit_2(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-3000:])
    return proc.stderr


def _foreign(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")


def _corrupted_optuna(path: Path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="s")
    for _ in range(20):
        study.enqueue_trial({"x": 1})
    del study
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 4 * page] = os.urandom(2 * page)  # two pages of the tables' b-trees
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: p.write_bytes(os.urandom(3000)), "is not a SQLite database"),
    (_foreign, "is a database of something else (tables: customers)"),
    (_corrupted_optuna, "corrupted"),
])
def test_a_foreign_or_corrupted_optuna_database_is_refused_before_any_work(tmp_path, make, needle):
    db = tmp_path / "study.db"
    make(db)
    before = db.read_bytes()
    proc = _cli("search", *TINY, "--searcher", "tpe", "--evaluations", "2", "--storage", f"sqlite:///{db}",
                "--output", str(tmp_path / "out"))
    _exit_2(proc, needle, str(db), "Optuna storage")
    assert db.read_bytes() == before  # nothing written into someone else's database
    assert not list((tmp_path / "out").glob("runs/*/trials.jsonl"))


def test_an_unwritable_output_directory_is_refused_before_any_work(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits; /sys refuses even root
        out = Path("/sys/automl-mpq-test-out")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "out"
    proc = _cli("search", *TINY, "--searcher", "random", "--evaluations", "2", "--output", str(out))
    _exit_2(proc, f"the output directory {str(out)!r} cannot be written", "writable --output")


def test_the_journal_undoes_a_write_the_full_disk_cut_and_keeps_the_records_before(tmp_path, monkeypatch):
    from automl import faults
    from automl.errors import RunDirError
    from automl.runs.runner import Journal
    from tests.agents_support import make_objective

    objective = make_objective()
    records = [objective(p, number=i) for i, p in enumerate(objective.space.sample(__import__("numpy").random.default_rng(i))
                                                            for i in range(3))]
    path = tmp_path / JOURNAL
    path.write_text(records[0].to_json() + "\n" + records[1].to_json()[:50])  # a torn line a kill -9 left
    monkeypatch.setattr(faults, "_ARMED", ("journal-write", 2, "enospc"))
    monkeypatch.setattr(faults, "_passes", {})
    journal = Journal(path, {0})
    assert path.read_text() == records[0].to_json() + "\n"  # the torn line is cut before appending
    journal.on_trial(records[1])
    with pytest.raises(RunDirError, match=r"the disk is full .*Every record already in .* is kept.*search --resume"):
        journal.on_trial(records[2])
    assert [r.number for r in read_journal(path)] == [0, 1] and path.read_text().endswith("\n")


@pytest.mark.slow
def test_a_full_disk_at_the_journal_keeps_what_was_written_and_says_how_to_resume(tmp_path):
    out = tmp_path / "out"
    proc = _cli("search", *TINY, "--searcher", "random", "--evaluations", "5", "--output", str(out),
                env=_env(AUTOML_FAULT="journal-write:3:enospc"))
    (run_dir,) = (out / "runs").iterdir()
    _exit_2(proc, "the disk is full", str(run_dir / JOURNAL), f"search --resume {run_dir}", "trial 2")
    text = (run_dir / JOURNAL).read_text()
    assert text.endswith("\n") and [r.number for r in read_journal(run_dir / JOURNAL)] == [0, 1]  # the half line undone
    from tests.test_cli_errors import parent_statuses

    assert parent_statuses(out) == ["FAILED"]
    resumed = _cli("search", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = read_journal(run_dir / JOURNAL)
    # Trial 2 was evaluated (and cached) before the disk filled: the resume proposes it again and
    # counts it as the evaluation it is, so the search holds 5 policies in trials 0..4, none twice.
    assert [r.number for r in records] == [0, 1, 2, 3, 4] and not any(r.cache_hit for r in records)
    assert len({r.policy.key() for r in records}) == 5
    assert parent_statuses(out) == ["FINISHED"]


# determinism across a kill -9 ----------------------------------------------------------------
def test_a_resumed_random_search_proposes_what_the_uninterrupted_one_did():
    """In process: 3 trials, a new searcher given the journal (restore_records), 3 more."""
    from agents.random_search import RandomSearcher
    from automl.runs.runner import restore_records
    from tests.agents_support import make_objective

    objective = make_objective
    whole = RandomSearcher(objective(), seed=7, max_tries=5).run(6)
    first = RandomSearcher(objective(), seed=7, max_tries=5)
    first.run(3)
    again = RandomSearcher(objective(), seed=7, max_tries=5)
    restore_records(again, list(first.records))
    again.objective.restore(again.records)
    rest = again.run(6)
    assert [r.policy for r in rest.records] == [r.policy for r in whole.records]
    assert [r.proposed for r in rest.records] == [r.proposed for r in whole.records]
    assert RandomSearcher(objective(), seed=8, max_tries=5).run(2).records[0].proposed != whole.records[0].proposed


def _best(run_dir: Path) -> tuple[int, dict, float]:
    result = json.loads((run_dir / "result.json").read_text())
    best = next(r for r in result["records"] if r["number"] == result["best"])
    return best["number"], best["policy"], best["metrics"]["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["evaluation:4", "cache-write:3", "journal-write:5"])
def test_random_search_gives_the_same_best_across_a_kill_9_and_resume(tmp_path, kill_at):
    args = [*TINY, "--searcher", "random", "--seed", "5", "--evaluations", "7"]
    whole = _cli("search", *args, "--output", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _cli("search", *args, "--output", str(tmp_path / "cut"), env=_env(AUTOML_FAULT=kill_at))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (cut_dir,) = (tmp_path / "cut" / "runs").iterdir()
    assert len(read_journal(cut_dir / JOURNAL)) < 7
    resumed = _cli("search", "--resume", str(cut_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (whole_dir,) = (tmp_path / "whole" / "runs").iterdir()
    assert _best(cut_dir) == _best(whole_dir)
    a, b = read_journal(whole_dir / JOURNAL), read_journal(cut_dir / JOURNAL)
    assert [(r.number, r.policy, r.accuracy, r.cache_hit) for r in a] == [(r.number, r.policy, r.accuracy, r.cache_hit) for r in b]


# a tracking server that goes away mid-search ------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    import urllib.request

    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--default-artifact-root", (tmp_path / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            assert proc.poll() is None, "the MLflow server exited"
            time.sleep(0.5)
    _stop(proc)
    raise AssertionError("the MLflow server did not start")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its workers, like a crash of its host
    except ProcessLookupError:
        return
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_tracking_server_that_goes_away_mid_search(tmp_path):
    """The search keeps evaluating and journaling, reports the writes that failed, and exits 2
    with a resume hint when its final writes find the server still gone; a resume against the
    restarted server logs every missing child run once and ends the parent FINISHED."""
    from mlflow import MlflowClient

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path, port)
    out = tmp_path / "out"
    try:
        cmd = [sys.executable, "-m", "automl", "search", *TINY, "--searcher", "random", "--evaluations", "40",
               "--tracking-uri", uri, "--output", str(out)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while time.time() < deadline and not list(out.glob(f"runs/*/{JOURNAL}")):
            time.sleep(0.05)
        (journal,) = list(out.glob(f"runs/*/{JOURNAL}"))
        while time.time() < deadline and len(read_journal(journal)) < 3 and proc.poll() is None:
            time.sleep(0.02)
        _stop(server)
        _, err = proc.communicate(timeout=600)
        run_dir = journal.parent
        assert proc.returncode == 2, err[-3000:]
        assert "Traceback" not in err and uri in err and f"search --resume {run_dir}" in err, err[-3000:]
        assert "write(s) failed after retries" in err, err[-3000:]
        records = read_journal(journal)
        assert sum(not r.cache_hit for r in records) == 40  # every policy evaluated and journaled
        assert (run_dir / FAILURES_FILE).read_text().strip()
        assert json.loads((run_dir / STATE).read_text())["status"] == "FAILED"

        server = _mlflow_server(tmp_path, port)  # the same store, back
        resumed = _cli("search", "--resume", str(run_dir))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        client = MlflowClient(tracking_uri=uri)
        parent_id = json.loads((run_dir / STATE).read_text())["parent_run_id"]
        parent = client.get_run(parent_id)
        assert parent.info.status == "FINISHED" and int(parent.data.tags[FAILURES_TAG]) >= 1
        kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000)
        finished = sorted(int(r.data.tags["automl.trial"]) for r in kids if r.info.status == "FINISHED")
        assert finished == [r.number for r in read_journal(journal)]  # each trial logged once, none lost
        assert all(r.info.status != "RUNNING" for r in kids)
    finally:
        _stop(server)
