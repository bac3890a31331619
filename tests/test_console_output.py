"""What a search and `automl ui` print: labels that are true, units only where they apply, the
resume's own accounting, links that open the search, and nothing from the solvers."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from automl.cli import main
from automl.runs.results import model_tested, search_line
from tests.test_cli_errors import TINY

ROOT = Path(__file__).resolve().parent.parent


def test_no_fine_tune_is_not_called_fine_tuned(capsys, tmp_path):
    """`--finetune-steps 0` (TINY): the test accuracy is of the searched policy, and every label says so."""
    from mlflow import MlflowClient

    from automl.tracking.tracker import default_tracking_uri
    from automl.tracking.ui import NOTE_TAG

    assert main(["search", *TINY, "--evaluations", "2", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(fine-tuned)" not in out and "not fine-tuned: --finetune-steps 0" in out
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("automl-mpq").experiment_id], "tags.best = 'true'")
    note = runs[0].data.tags[NOTE_TAG]
    assert "(not fine-tuned: --finetune-steps 0)" in note and "(fine-tuned" not in note


def test_model_tested_names_the_kept_step():
    from types import SimpleNamespace

    assert model_tested(None, 0) == "not fine-tuned: --finetune-steps 0"
    assert model_tested(SimpleNamespace(steps=40, best_step=0), 40).startswith("not fine-tuned: no step of 40 beat")
    assert model_tested(SimpleNamespace(steps=40, best_step=25), 40) == "fine-tuned, step 25 of 40"


def test_a_resumed_summary_keeps_the_sessions_apart(tmp_path):
    from agents.records import SearchResult
    from automl.runs.config import SearchConfig
    from automl.runs.runner import run_search
    from tests.tasks import tiny

    cfg = SearchConfig(task="tests.tasks:tiny", searcher={"name": "random"}, run={"evaluations": 4, "output": str(tmp_path)},
                       finetune={"steps": 0})
    result = run_search(cfg, task=tiny(), quiet=True)
    assert isinstance(result, SearchResult)
    fresh = search_line(result)
    assert re.fullmatch(r"4 distinct evaluations \(0 cache hits, 0 stopped early\) in \d+ s, \d+ s of them evaluating", fresh)
    resumed = search_line(result, earlier={0, 1, 2})
    assert "; this session: 1 in " in resumed and "; all sessions: " in resumed and "of them evaluating" in resumed


def test_a_resume_prints_no_solver_lines(capsys, tmp_path):
    """The integer program (HiGHS) is asked to be quiet on every solve, the warm start of a resume too."""
    out = tmp_path / "out"
    argv = ["search", "--task", "tests.tasks:tiny", "--searcher", "ilp_tpe", "--finetune-steps", "0", "--output", str(out)]
    assert main([*argv, "--evaluations", "2"]) == 0
    capsys.readouterr()
    (run_dir,) = out.glob("runs/*")
    assert main(["search", "--resume", str(run_dir), "--evaluations", "4"]) == 0
    printed = capsys.readouterr()
    for text in (printed.out, printed.err):
        assert not re.search(r"HiGHS|Presolv|Solving|MIP|Coefficient ranges", text), text


def test_a_latency_budget_line_carries_no_size_unit(tmp_path, capsys):
    from automl.tracking.ui import limits_text

    assert "kB" not in limits_text({"latency@bitserial": 1.5})
    assert limits_text({"size": 2500.0, "latency@bitserial": 1.5}).endswith("(kB = 1000 B)")


def test_the_ui_notes_name_the_installed_mlflow():
    import mlflow

    import automl.tracking.ui as ui

    major_minor = ".".join(mlflow.__version__.split(".")[:2])
    assert f"MLflow {major_minor}'s UI" in ui.__doc__


def _help_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "automl", "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


def test_ui_prints_its_address_at_once_then_a_link_per_search(tmp_path):
    """The address comes before the server answers (within a few start-ups of `automl`, where the
    server takes many); once it answers, each search's own view is linked."""
    from automl.runs.config import SearchConfig
    from automl.runs.runner import run_search
    from automl.tracking.tracker import default_tracking_uri
    from tests.tasks import tiny

    cfg = SearchConfig(task="tests.tasks:tiny", searcher={"name": "random"}, run={"evaluations": 2, "output": str(tmp_path)},
                       finetune={"steps": 0})
    run_search(cfg, task=tiny(), quiet=True)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    (parent,) = client.search_runs([client.get_experiment_by_name("automl-mpq").experiment_id],
                                   "tags.`automl.kind` = 'search'")
    unit = _help_seconds()
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "automl", "ui", "--output", str(tmp_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        first = proc.stdout.readline()
        first_at = time.perf_counter() - start
        assert first.startswith(f"MLflow UI: http://127.0.0.1:{port}  (starting"), first
        assert first_at < 3 * unit, (first_at, unit)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if parent.info.run_name in line:
                break
        ready_at = time.perf_counter() - start
        text = "".join(lines)  # the server's own lines may come first
        assert "\nready in " in "\n" + text and "grouped by search" in text
        assert f"viewStateShareKey=search-{parent.info.run_id}&workflowType=machine_learning" in text
        assert ready_at > first_at
    finally:
        import os

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_ui_refuses_a_taken_port_and_suggests_a_free_one(capsys, tmp_path):
    import socket

    unit = _help_seconds()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    start = time.perf_counter()
    assert main(["ui", "--output", str(tmp_path), "--port", str(busy_port)]) == 2
    err = capsys.readouterr().err
    free = int(re.search(r"e\.g\. --port (\d+) \(free now\)", err).group(1))
    assert free != busy_port and f"--port {busy_port} on 127.0.0.1 is not available" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", free))  # it is free
    assert time.perf_counter() - start < 4 * unit  # no server was started
    busy.close()
    assert list(tmp_path.iterdir()) == []
