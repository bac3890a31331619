"""Every bad input a user can make gets one paragraph and exit code 2; nothing is left RUNNING."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from automl.cli import main
from automl.runs.resume import JOURNAL

TINY = ["--task", "tests.tasks:tiny", "--searcher", "random", "--finetune-steps", "0"]


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def parent_statuses(output: Path) -> list[str]:
    from mlflow import MlflowClient

    from automl.tracking.tracker import default_tracking_uri

    if not (output / "mlflow.db").exists():
        return []
    client = MlflowClient(tracking_uri=default_tracking_uri(output))
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, "tags.`automl.kind` = 'search'") if ids else []
    return [r.info.status for r in runs]


def one_paragraph(code: int, err: str, *patterns: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if line.startswith("automl ")]) == 1, err
    for p in patterns:
        assert re.search(p, err), (p, err)


@pytest.mark.parametrize(
    "yaml_text,patterns",
    [
        ("run: {evaluations: many}\n", [r"run.evaluations: expected int, got 'many' \(str\)", "run.yaml"]),
        ('run: {threads: "two"}\n', [r"run.threads: expected int, got 'two'"]),
        ("run: {seed: [1, 2]}\n", [r"run.seed: expected int, got \[1, 2\] \(list\)"]),
        ("evaluations: 5\n", [r"'evaluations' belongs to the section 'run': write `run: \{evaluations: ...\}`"]),
        ("finetune: {steps: -1}\n", [r"finetune.steps: must be greater than or equal to 0, got -1"]),
        ("searcher: {name: random, options: {n_startup: 3}}\n", [r"unknown option 'n_startup' for searcher 'random'"]),
        ("space: {pinned_bits: 40}\n", [r"space.pinned_bits: must be less than or equal to 32, got 40"]),
        ("finetune: {patience: -1}\n", [r"finetune.patience: must be greater than or equal to 0"]),
        ("finetune: {finalists: 0}\n", [r"finetune.finalists: must be greater than or equal to 1"]),
        ("finetune: {finalists: three}\n", [r"finetune.finalists: expected int, got 'three'"]),
        ("finetune: {stop_at_float: maybe}\n", [r"finetune.stop_at_float: expected bool, got 'maybe'"]),
        ("finetune: {overlap: maybe}\n", [r"finetune.overlap: expected bool, got 'maybe'"]),
        ("searcher: {widen_activations: sometimes}\n", [r"searcher.widen_activations: expected bool, got 'sometimes'"]),
        ("evaluation: {bn_samples: -1}\n", [r"evaluation.bn_samples: must be greater than or equal to 0"]),
        ("evaluation: {bn_samples: many}\n", [r"evaluation.bn_samples: expected int, got 'many'"]),
        ('space: {nm_patterns: ["3:4"]}\n', [r"nm_patterns: expected patterns from .*got '3:4'"]),
        ("space: {nm_patterns: [2:4]}\n", [r"space.nm_patterns\[0\]: expected str, got 124"]),
        (": : :\n", [r"not valid YAML"]),
        ("- a\n- b\n", [r"must hold a mapping"]),
    ],
)
def test_bad_config_files(capsys, tmp_path, yaml_text, patterns):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml_text)
    start = time.perf_counter()
    code, err = run(capsys, "search", "--config", str(cfg), *TINY, "--output", str(tmp_path / "out"))
    one_paragraph(code, err, *patterns)
    assert time.perf_counter() - start < 10  # caught before any work
    assert not (tmp_path / "out" / "runs").exists()


def test_binary_config_file(capsys, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(b"\x89\xff\xfe\x00garbage")
    code, err = run(capsys, "search", "--config", str(cfg), "--output", str(tmp_path))
    one_paragraph(code, err, "run.yaml")


@pytest.mark.parametrize(
    "argv,patterns",
    [
        (["--storage", "notaurl"], [r"storage 'notaurl' is neither a database URL"]),
        (["--storage", "nosuchdb://x"], [r"not a database URL|not supported"]),
        # Without the postgres extra the same URL is refused for its missing driver, naming the extra.
        (["--storage", "postgresql://nobody@127.0.0.1:9/db"],
         [r"cannot connect to the Optuna storage|pip install 'automl-mpq\[postgres\]'"]),
        (["--tracking-uri", "postgresql://nobody@127.0.0.1:9/db"],
         [r"cannot connect to the MLflow tracking store|pip install 'automl-mpq\[postgres\]'"]),
        (["--tracking-uri", "notaurl"], [r"tracking URI 'notaurl' is not understood"]),
        (["--finetune-steps", "-1"], [r"finetune.steps: must be greater than or equal to 0"]),
        (["--finalists", "0"], [r"finetune.finalists: must be greater than or equal to 1"]),
        (["--evaluations", "0"], [r"run.evaluations: must be greater than or equal to 1"]),
        (["--evaluations", "1000000000000"], [r"run.evaluations: must be less than or equal to 10000000"]),
        (["--nm", "2:5"], [r"nm_patterns: expected patterns from .*got '2:5'. Dense is always included"]),
        (["--nm", "2:4,2:4"], [r"nm_patterns lists a pattern twice"]),
        (["--resume", "nosuchrun"], [r"cannot resume 'nosuchrun'"]),
    ],
)
def test_bad_options_are_caught_before_any_work(capsys, tmp_path, argv, patterns):
    start = time.perf_counter()
    code, err = run(capsys, "search", *TINY, "--evaluations", "2", "--output", str(tmp_path), *argv)
    one_paragraph(code, err, *patterns)
    assert time.perf_counter() - start < 15
    assert not list(tmp_path.glob("runs/*/trials.jsonl"))
    assert "RUNNING" not in parent_statuses(tmp_path)


def test_output_naming_an_existing_file(capsys, tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    code, err = run(capsys, "search", *TINY, "--output", str(f))
    one_paragraph(code, err, r"output '.*taken' is an existing file")


def test_debug_works_after_the_subcommand(capsys, tmp_path):
    code, err = run(capsys, "search", "--searcher", "nope", "--output", str(tmp_path), "--debug")
    assert code == 2 and "Traceback" in err
    code, err = run(capsys, "best", "--debug", "--output", str(tmp_path), "--tracking-uri", "notaurl")
    assert code == 2 and "Traceback" in err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny search (3 evaluations); tests copy it before breaking it."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["search", *TINY, "--evaluations", "3", "--output", str(out)]) == 0
    return out


def _copy(finished_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    run_dir = next((out / "runs").iterdir())
    return out, run_dir


@pytest.mark.parametrize(
    "damage,patterns",
    [
        (lambda text: "null\n" + text, [r"line 1 is a JSON NoneType, not a trial record"]),
        (lambda text: '{"number": 1, "policy": 3}\n' + text, [r"line 1 is .*trial record"]),
        (lambda text: text + "[1, 2]\n" + text.splitlines()[0] + "\n", [r"line 4 is a JSON list"]),
        (lambda text: "{not json\n" + text, [r"line 1 is not JSON"]),
        (b"\x89PNG\r\n\x1a\n\xff\xfe garbage", [r"is not text"]),
    ],
)
def test_a_damaged_journal_is_named_and_the_finished_parent_stays_finished(capsys, tmp_path, finished_run, damage, patterns):
    out, run_dir = _copy(finished_run, tmp_path)
    journal = run_dir / JOURNAL
    if isinstance(damage, bytes):
        journal.write_bytes(damage)
    else:
        journal.write_text(damage(journal.read_text()))
    code, err = run(capsys, "search", "--resume", str(run_dir), "--evaluations", "5")
    one_paragraph(code, err, "trials.jsonl", *patterns)
    assert parent_statuses(out) == ["FINISHED"]


def test_a_torn_last_line_is_skipped(tmp_path, finished_run):
    from automl.runs.resume import read_journal

    _out, run_dir = _copy(finished_run, tmp_path)
    journal = run_dir / JOURNAL
    journal.write_text(journal.read_text() + '{"number": 3, "pol')
    assert [r.number for r in read_journal(journal)] == [0, 1, 2]


def test_a_parent_left_running_by_kill_9_is_closed_even_when_the_resume_fails(capsys, tmp_path, finished_run):
    import json
    import socket
    import subprocess

    from mlflow import MlflowClient

    from automl.runs.lifecycle import OWNER
    from automl.runs.resume import STATE
    from automl.tracking.tracker import default_tracking_uri

    out, run_dir = _copy(finished_run, tmp_path)
    state = json.loads((run_dir / STATE).read_text())
    client = MlflowClient(tracking_uri=default_tracking_uri(out))
    client.update_run(state["parent_run_id"], status="RUNNING")  # what a kill -9 leaves behind
    del state["status"]
    (run_dir / STATE).write_text(json.dumps(state))
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run_dir / OWNER).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "start": None}))
    (run_dir / JOURNAL).write_text("null\n" + (run_dir / JOURNAL).read_text())
    code, err = run(capsys, "search", "--resume", str(run_dir), "--evaluations", "5")
    one_paragraph(code, err, "line 1")
    assert parent_statuses(out) == ["KILLED"]


@pytest.mark.parametrize(
    "searcher,options,patterns",
    [
        ("maskable_ppo", "{channels: bogus}", [r"channels must be one of \['groups', 'uniform'\]|channels must be one of"]),
        ("maskable_ppo", "{explore_moves: 0}", [r"explore_moves must be > 0"]),
        ("ilp_tpe", "{sweep: 0}", [r"sweep must be >= 1, got 0"]),
        ("ilp_tpe", "{min_factor: 1.5}", [r"min_factor must lie in \(0, 1\]"]),
        ("ilp_tpe", "{warm_start: true}", [r"takes no warm_start", r"searcher tpe"]),
    ],
)
def test_bad_searcher_option_values_exit_2_and_close_the_run(capsys, tmp_path, searcher, options, patterns):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"searcher: {{name: {searcher}, options: {options}}}\n")
    argv = [a for a in TINY if a not in ("--searcher", "random")]
    code, err = run(capsys, "search", "--config", str(cfg), *argv, "--evaluations", "2", "--output", str(tmp_path / "out"))
    one_paragraph(code, err, *patterns)
    assert "RUNNING" not in parent_statuses(tmp_path / "out")


@pytest.mark.parametrize("value,pattern", [('{"2:4": 5.0}', r"nm_speedup"), ('{2:4: 2.0}', r"nm_speedup")])
def test_a_profile_with_a_bad_nm_speedup_exits_2(capsys, tmp_path, value, pattern):
    shipped = Path(__file__).resolve().parents[1] / "automl" / "cost" / "profiles" / "sparse_accel.yaml"
    profile = tmp_path / "bad.yaml"
    profile.write_text(shipped.read_text().replace('nm_speedup: {"2:4": 2.0}', f"nm_speedup: {value}"))
    code, err = run(capsys, "search", *TINY, "--evaluations", "2", "--output", str(tmp_path / "out"),
                    "--budget", f"latency<=90%@{profile}")
    one_paragraph(code, err, pattern, "bad.yaml")
    assert "RUNNING" not in parent_statuses(tmp_path / "out")


@pytest.mark.parametrize("argv", [["--searcher", "nope"], ["--budget", "size<=zz"], ["--threads", "0"], ["--finetune-lr=-1"]])
def test_a_bad_option_is_refused_before_torch_is_imported(argv):
    """Issue 14: a typo answers at once; torch's import alone is ~1 s, so the check must not need it."""
    import subprocess
    import sys

    code = ("import sys\nfrom automl.cli import main\nrc = main(['search', *sys.argv[1:]])\n"
            "print('torch' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "2"], out.stdout + out.stderr
    assert "Error" in out.stderr and "Traceback" not in out.stderr
