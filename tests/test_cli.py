"""`automl search` as a user meets it: bad input gets one paragraph and exit code 2."""

from __future__ import annotations

import pytest

from automl.cli import main

TINY = "tests.tasks:tiny"


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--searcher", "hillclimb"], "unknown searcher 'hillclimb'"),
        (["--budget", "size<<3"], "size<<3"),
        (["--budget", "size<=0.0001x"], "cannot be met|cheapest"),
        (["--task", "nosuchpkg.mod:make"], "could not import 'nosuchpkg.mod'"),
        (["--task", "tests.tasks:wrong_type"], "returned str"),
        (["--task", "tests.tasks:broken"], "the data directory is missing"),
        (["--task", "tests.tasks:empty_val"], "val_loader"),
        (["--task", "tests.tasks:no_layers"], "no Conv1d, Conv2d or Linear"),
        (["--tracking-uri", "http://127.0.0.1:9"], "http://127.0.0.1:9"),
    ],
)
def test_bad_input_gets_one_paragraph_and_exit_code_2(capsys, tmp_path, argv, message):
    base = ["search", "--task", TINY, "--evaluations", "2", "--output", str(tmp_path)]
    code, err = run(capsys, *base, *argv)
    assert code == 2
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err


def test_debug_shows_the_traceback(capsys, tmp_path):
    code, err = run(capsys, "--debug", "search", "--task", TINY, "--searcher", "nope", "--output", str(tmp_path))
    assert code == 2 and "Traceback" in err


def test_config_file_keys_are_checked(capsys, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("evaluatons: 5\n")
    code, err = run(capsys, "search", "--config", str(cfg), "--output", str(tmp_path))
    assert code == 2 and "evaluatons" in err
