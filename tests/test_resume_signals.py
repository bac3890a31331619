"""Resume keeps its word; parent runs end FINISHED, FAILED or KILLED whatever stops a search."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from automl.cli import main
from automl.runs.config import SearchConfig
from automl.runs.lifecycle import OWNER
from automl.runs.resume import JOURNAL, STATE, read_journal
from automl.runs.runner import run_search
from tests.agents_support import StopAfter
from tests.test_cli_errors import TINY, parent_statuses

ROOT = Path(__file__).resolve().parent.parent



def _interrupted_run(where: Path, evaluations: int = 5) -> Path:
    """A search started with a relative --output in ``where`` and stopped by Ctrl-C after 2 trials."""
    from tests.tasks import tiny

    os.chdir(where)
    cfg = SearchConfig(task="tests.tasks:tiny", searcher={"name": "random"}, run={"evaluations": evaluations, "output": "rel-out"}, finetune={"steps": 0})
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, task=tiny(), quiet=True, callbacks=[StopAfter(2)])
    return next((where / "rel-out" / "runs").iterdir())


def test_ctrl_c_kills_the_parent_and_resume_from_elsewhere_uses_the_runs_own_count(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_dir = _interrupted_run(tmp_path / "a")
    out = tmp_path / "a" / "rel-out"
    assert parent_statuses(out) == ["KILLED"]
    assert json.loads((run_dir / STATE).read_text())["status"] == "KILLED" and not (run_dir / OWNER).exists()
    assert len(read_journal(run_dir / JOURNAL)) == 2
    saved = json.loads((run_dir / "config.json").read_text())
    assert Path(saved["run"]["output"]).is_absolute()

    monkeypatch.chdir(tmp_path / "b")  # another working directory, no --evaluations
    assert main(["search", "--resume", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "2 of 5 evaluations done" in err and "override" not in err
    assert len(read_journal(run_dir / JOURNAL)) == 5  # the run's own 5, not the default 120
    assert parent_statuses(out) == ["FINISHED"]
    assert not (tmp_path / "b" / "automl-runs").exists()


def test_overrides_are_reported_meaning_changes_refused_and_finished_runs_not_reopened(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from automl.tracking.tracker import default_tracking_uri

    monkeypatch.chdir(tmp_path)
    run_dir = _interrupted_run(tmp_path, evaluations=3)
    out = tmp_path / "rel-out"
    code = main(["search", "--resume", str(run_dir), "--budget", "size<=0.5x"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot change 'budget'" in err and "('size<=0.125x',)" in err
    assert parent_statuses(out) == ["KILLED"]  # a refused resume does not touch the parent

    assert main(["search", "--resume", str(run_dir), "--evaluations", "4", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "override run.evaluations: 3 -> 4" in err and "threads" not in err.split("override", 1)[1].split("\n")[0]
    assert len(read_journal(run_dir / JOURNAL)) == 4 and parent_statuses(out) == ["FINISHED"]

    client = MlflowClient(tracking_uri=default_tracking_uri(out))
    parent_id = json.loads((run_dir / STATE).read_text())["parent_run_id"]
    end = client.get_run(parent_id).info.end_time
    assert main(["search", "--resume", str(run_dir)]) == 0
    assert "nothing to add" in capsys.readouterr().err
    assert client.get_run(parent_id).info.end_time == end and parent_statuses(out) == ["FINISHED"]


def _start(tmp_path: Path, n: int = 400) -> tuple[subprocess.Popen, Path]:
    cmd = [sys.executable, "-m", "automl", "search", *TINY, "--evaluations", str(n), "--output", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = list(tmp_path.glob("runs/*/trials.jsonl"))
        if runs and len(read_journal(runs[0])) >= 2:
            return proc, runs[0].parent
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode()[-2000:])
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no progress")


def test_sigterm_ends_the_parent_killed(tmp_path):
    proc, run_dir = _start(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    assert b"Traceback" not in err and f"terminated; the run {run_dir} is saved with ".encode() in err
    assert f"search --resume {run_dir}".encode() in err
    assert parent_statuses(tmp_path) == ["KILLED"]
    assert json.loads((run_dir / STATE).read_text())["status"] == "KILLED" and not (run_dir / OWNER).exists()
    assert len(read_journal(run_dir / JOURNAL)) >= 2


@pytest.mark.slow
def test_kill_9_is_detected_and_closed_by_automl_best(tmp_path, capsys):
    proc, run_dir = _start(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert parent_statuses(tmp_path) == ["RUNNING"] and (run_dir / OWNER).exists()
    assert main(["best", "--output", str(tmp_path)]) == 0
    assert "closed run" in capsys.readouterr().err
    assert parent_statuses(tmp_path) == ["KILLED"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_automl_ui_stops_its_server_on_sigterm(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "automl", "ui", "--output", str(tmp_path), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    time.sleep(1)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped raise, on purpose
def test_a_sigterm_whose_raise_python_drops_still_stops_the_search():
    """A handler that runs inside a ``__del__`` raises where Python only prints the exception;
    the signal is kept, and the next trial's check raises it."""
    from automl.runs.lifecycle import Terminated, handle_termination, raise_if_terminated

    class KilledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # bytecodes, where the handler runs: its exception is dropped here
                pass

    with handle_termination():
        raise_if_terminated()  # nothing received yet
        obj = KilledWhileCollected()
        del obj  # "Exception ignored in ... __del__": the search would have run on
        with pytest.raises(Terminated):
            raise_if_terminated()
    raise_if_terminated()  # the block is over: nothing pending
