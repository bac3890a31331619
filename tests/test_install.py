"""Installing automl-mpq into a user's environment keeps the torch (and ONNX) they have, when in range."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")
packaging_requirements = pytest.importorskip("packaging.requirements")


def _requirements() -> dict[str, object]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = [packaging_requirements.Requirement(d) for d in deps]
    return {r.name: r.specifier for r in reqs}


@pytest.mark.parametrize("version, ok", [
    ("2.13.0", True), ("2.13.0+cpu", True), ("2.14.1", True), ("2.14.1+cu130", True), ("2.14.0+cu128", True),
    ("2.12.1", False), ("2.15.0", False),
])
def test_the_torch_range_takes_the_tested_cpu_and_cuda_builds(version, ok):
    """Lowest (2.13) and highest (2.14.1) tested torch, CPU or CUDA builds, satisfy the requirement: pip keeps them."""
    assert _requirements()["torch"].contains(version) is ok


def test_the_running_torch_is_in_the_stated_range():
    assert _requirements()["torch"].contains(torch.__version__)


def test_onnx_and_onnxruntime_are_ranges_not_pins():
    req = _requirements()
    assert req["onnx"].contains("1.23.2") and req["onnx"].contains("1.24.0")
    assert req["onnxruntime"].contains("1.32.0") and req["onnxruntime"].contains("1.33.1")


@pytest.mark.slow
def test_pip_install_of_the_project_keeps_the_installed_torch(tmp_path):
    """What pip would do to this environment (``--dry-run --report``, nothing installed): it
    installs automl-mpq and leaves the installed torch alone."""
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                           str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    planned = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}
    assert "automl-mpq" in planned
    assert "torch" not in planned, f"pip would replace torch {torch.__version__} with {planned['torch']}"
