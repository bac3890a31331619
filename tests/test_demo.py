"""The demo (`make run`): the delivered ONNX file is smaller and faster than the float one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from automl.errors import DataError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_demo_delivers_a_file_smaller_and_faster_than_float(tmp_path):
    from automl.runs.config import load_config
    from automl.runs.loading import check_task_data
    from automl.runs.runner import run_search

    cfg = load_config(ROOT / "examples" / "demo.yaml").merged({"run.output": str(tmp_path), "run.threads": 1})
    try:
        check_task_data(cfg.task, None)
    except DataError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    run_search(cfg, quiet=True)
    run_dir = next((tmp_path / "runs").iterdir())
    onnx = json.loads((run_dir / "export_report.json").read_text())["onnx"]
    # Timed round-robin against the float file in the same run (best of repeated timings).
    assert onnx["speedup_b1"] >= 1.0 and onnx["speedup_batch"] >= 1.0, onnx
    assert onnx["onnx_bytes"] < onnx["float_onnx_bytes"]
