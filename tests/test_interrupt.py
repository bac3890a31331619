"""Ctrl-C at any moment leaves either a resumable run or nothing, and says which with the real path;
`automl best` lists stopped searches with the command that continues them."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.base import Callback
from automl.cli import main
from automl.runs.resume import JOURNAL, read_journal
from tests.agents_support import StopAfter
from tests.test_cli_errors import TINY, parent_statuses

ROOT = Path(__file__).resolve().parent.parent
SAVED = re.compile(r"interrupted; the run (\S+) is saved with (\d+) evaluated polic(?:y|ies)\. "
                   r"Continue with: .*search --resume (\S+)")


def _raise(*args, **kwargs):
    raise KeyboardInterrupt



def _search(out: Path, evaluations: int = 4) -> list[str]:
    return ["search", *TINY, "--evaluations", str(evaluations), "--output", str(out)]


def _nothing_left(out: Path, err: str) -> None:
    assert "nothing was saved" in err and "<run dir>" not in err, err
    assert not list(out.glob("runs/*")), list(out.glob("runs/*"))
    assert parent_statuses(out) == []  # no MLflow run either


def _saved(out: Path, err: str, evaluated: int) -> Path:
    m = SAVED.search(err)
    assert m, err
    (run_dir,) = out.glob("runs/*")
    assert m.group(1) == m.group(3) == str(run_dir) and int(m.group(2)) == evaluated
    assert (run_dir / "config.json").is_file() and len(read_journal(run_dir / JOURNAL)) == evaluated
    assert parent_statuses(out) == ["KILLED"]
    return run_dir


@pytest.mark.parametrize("where", ["loading the task", "building the problem", "building the evaluator"])
def test_ctrl_c_during_set_up_leaves_nothing(capsys, tmp_path, monkeypatch, where):
    if where == "loading the task":
        monkeypatch.setattr("automl.runs.loading.load_task", _raise)
    elif where == "building the problem":
        monkeypatch.setattr("automl.runs.runner._build_problem", _raise)
    else:  # the run directory exists and the store is opening beside it
        monkeypatch.setattr("automl.runs.runner.Evaluator", _raise)
    out = tmp_path / "out"
    assert main(_search(out)) == 128 + signal.SIGINT
    _nothing_left(out, capsys.readouterr().err)


def test_ctrl_c_while_the_command_line_starts_is_one_line(capsys, monkeypatch):
    from automl.__main__ import run

    monkeypatch.setattr("automl.__main__.install_interrupt_handler", lambda: None)  # not in pytest's own process
    monkeypatch.setattr("automl.__main__.uninstall_interrupt_handler", lambda: None)
    monkeypatch.setattr("automl.cli.build_parser", _raise)
    assert run() == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert err == "interrupted while starting; nothing was saved.\n"


_HANDLED = """
import sys, time
from automl.__main__ import install_interrupt_handler, _on_sigint
install_interrupt_handler()
try:
    {setup}
    deadline = time.perf_counter() + 5
    while time.perf_counter() < deadline:
        pass
except KeyboardInterrupt:
    sys.exit(42)
sys.exit(0)
"""


@pytest.mark.parametrize("setup", [
    # Ctrl-C while the import machinery runs (where it could leave the import lock held): deferred, not lost.
    "from types import SimpleNamespace; _on_sigint(2, SimpleNamespace(f_globals={'__name__': '_frozen_importlib'}))",
    # Ctrl-C swallowed by a destructor ("Exception ignored in ..."): delivered again.
    "exec('class A:\\n    def __del__(self): raise KeyboardInterrupt'); a = A(); del a",
])
def test_ctrl_c_in_the_import_machinery_or_a_destructor_is_not_lost(setup):
    code = _HANDLED.replace("{setup}", setup)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 42, proc.stderr
    assert time.perf_counter() - start < 5, "the interrupt came only once the loop had ended"


def test_ctrl_c_during_an_import_lands_once_it_has_finished(tmp_path):
    """Not inside it (torch's C++ start-up aborts, the import lock can stay held); a second Ctrl-C at once."""
    (tmp_path / "slow_module.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\nend = time.perf_counter() + 0.5\n"
        "while time.perf_counter() < end:\n    pass\nDONE = True\n")
    code = f"""
import os, signal, sys, time
sys.path.insert(0, {str(tmp_path)!r})
from automl.__main__ import install_interrupt_handler
install_interrupt_handler()
try:
    import slow_module
    time.sleep(5)
except KeyboardInterrupt:
    sys.exit(42 if "slow_module" in sys.modules and slow_module.DONE else 1)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 42, proc.stderr
    twice = code.replace("os.kill(os.getpid(), signal.SIGINT)", "")
    (tmp_path / "slow_module.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.1)\nos.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(5)\nDONE = True\n")
    proc = subprocess.run([sys.executable, "-c", twice], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr  # stopped inside the import


def test_ctrl_c_once_the_parent_exists_leaves_a_run_that_resumes(capsys, tmp_path, monkeypatch):
    from automl.tracking.tracker import MlflowTracker

    out = tmp_path / "out"
    with monkeypatch.context() as m:  # the float baseline is being logged: the parent run exists, no trial yet
        m.setattr(MlflowTracker, "log_parent_metrics", _raise)
        assert main(_search(out)) == 128 + signal.SIGINT
    run_dir = _saved(out, capsys.readouterr().err, 0)
    assert main(["search", "--resume", str(run_dir)]) == 0
    capsys.readouterr()
    assert len(read_journal(run_dir / JOURNAL)) == 4 and parent_statuses(out) == ["FINISHED"]


def test_ctrl_c_during_the_search_names_the_run_and_best_lists_it(capsys, tmp_path, monkeypatch):
    from automl.runs import runner

    out = tmp_path / "out"
    stop = StopAfter(2)
    with monkeypatch.context() as m:
        m.setattr(runner.MlflowLogging, "on_trial", lambda self, record: stop.on_trial(record))
        assert main(_search(out, evaluations=5)) == 128 + signal.SIGINT
    run_dir = _saved(out, capsys.readouterr().err, 2)
    assert main(["best", "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert ", KILLED)" in table and "stopped (Ctrl-C, SIGTERM or a killed process): 2 of 5 evaluations in its journal" in table
    assert f"search --resume {run_dir}" in table


def test_best_lists_a_failed_search_with_how_to_resume_it(capsys, tmp_path):
    from automl.runs.config import SearchConfig
    from automl.runs.runner import run_search
    from tests.tasks import tiny

    class Boom(Callback):
        def on_trial(self, record) -> bool:  # noqa: ANN001
            if record.number == 2:
                raise RuntimeError("the disk went away")
            return True

    cfg = SearchConfig(task="tests.tasks:tiny", searcher={"name": "random"}, run={"evaluations": 5, "output": str(tmp_path)},
                       finetune={"steps": 0})
    with pytest.raises(RuntimeError):
        run_search(cfg, task=tiny(), quiet=True, callbacks=[Boom()])
    (run_dir,) = tmp_path.glob("runs/*")
    assert main(["best", "--output", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert ", FAILED)" in table and "ended by an error: 3 of 5 evaluations in its journal" in table
    assert f"search --resume {run_dir}" in table and "no best policies" not in table


def _help_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "automl", "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


@pytest.mark.slow
def test_a_real_ctrl_c_at_any_moment_leaves_a_resumable_run_or_nothing(tmp_path):
    """SIGINT to a real `automl search` at moments spread over its life (multiples of its start-up)."""
    unit = _help_seconds()
    outcomes = []
    # Moments in multiples of `automl --help`, then once the journal holds a record (mid-search).
    for i, k in enumerate((0.5, 1, 2, 4, 8, None)):
        out = tmp_path / f"out{i}"
        proc = subprocess.Popen([sys.executable, "-m", "automl", *_search(out, evaluations=200)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if k is not None:
            time.sleep(k * unit)
        else:
            deadline = time.time() + 600
            while not any(read_journal(j) for j in out.glob(f"runs/*/{JOURNAL}")) and time.time() < deadline:
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=300)[1]
        if proc.returncode == 0:  # finished before the signal
            outcomes.append("finished")
            continue
        assert "Traceback" not in err and "<run dir>" not in err, err[-2000:]
        if proc.returncode == -signal.SIGINT:  # still starting the interpreter: Python's own handler not yet set
            assert err == "" and not out.exists(), err
            outcomes.append("nothing")
            continue
        assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
        if "nothing was saved" in err:
            assert not list(out.glob("runs/*")) and (not out.exists() or parent_statuses(out) == []), err
            outcomes.append("nothing")
        else:
            m = SAVED.search(err)
            assert m, err[-2000:]
            run_dir = Path(m.group(1))
            assert run_dir.is_dir() and len(read_journal(run_dir / JOURNAL)) == int(m.group(2))
            outcomes.append(f"saved {m.group(2)}")
            last = run_dir
    assert "nothing" in outcomes and any(o.startswith("saved") for o in outcomes), outcomes
    done = subprocess.run([sys.executable, "-m", "automl", "search", "--resume", str(last), "--evaluations", "6"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
