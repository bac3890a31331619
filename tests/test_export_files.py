"""The deployment files as a user meets them: modes of their umask and a silent ONNX Runtime load."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from automl.cli import main
from tests.test_onnx_export import _ampq, _setup


@pytest.fixture
def run_dir(tiny_resnet, tmp_path):
    problem, ev, _ = _setup(tiny_resnet)
    run = tmp_path / "run"
    _ampq(problem, ev, problem.space.uniform(4, 8, sparsity=0.25), run / "best_model.ampq")
    return run


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_exported_files_take_the_users_umask(run_dir, tmp_path, capsys, mask, mode):
    old = os.umask(mask)
    try:
        assert main(["export", str(run_dir), "--output", str(tmp_path / "m.onnx")]) == 0
        assert main(["export", str(run_dir), "--format", "ampq", "--output", str(tmp_path / "m.ampq")]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    for path in (tmp_path / "m.onnx", tmp_path / "m.ampq"):
        assert path.stat().st_mode & 0o777 == mode, (path.name, oct(path.stat().st_mode & 0o777))


def test_the_exported_onnx_loads_without_a_runtime_warning(run_dir, tmp_path, capsys):
    """ONNX Runtime warns `Removing initializer ...` for every unused constant; the file holds none."""
    assert main(["export", str(run_dir), "--output", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    code = textwrap.dedent("""
        import onnxruntime as ort
        ort.InferenceSession("m.onnx")  # a default session: default logging, default optimisations
        print("loaded")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "loaded", done.stderr
    assert done.stderr.strip() == "", done.stderr
